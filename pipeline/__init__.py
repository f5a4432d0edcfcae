"""mateo-bulk: change thousands of Mateo conversations at once, safely.

The public face of the library::

    from pipeline import RunSettings, run, resume
    summary = run(RunSettings("reassign.csv", token=token))
    if summary.exit_code == 3:
        summary = resume(summary.run_dir, token=token)

Every name below is imported on first use, so `import pipeline` (and the CLI's start-up) stays
cheap; each sync function has an async twin for code that already runs an event loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Where each public name lives: the one list of the library's public face.
_PUBLIC = {
    "RunSettings": "pipeline.settings",
    "RunSummary": "pipeline.runner",
    "run": "pipeline.runner",
    "run_async": "pipeline.runner",
    "resume": "pipeline.runner",
    "resume_async": "pipeline.runner",
    "plan": "pipeline.runner",
    "plan_async": "pipeline.runner",
    "apply_plan": "pipeline.runner",
    "run_status": "pipeline.runner",
    "export_report": "pipeline.runner",
    "load_job": "pipeline.jobs",
    "plan_job": "pipeline.jobs",
    "run_job": "pipeline.jobs",
    "run_job_async": "pipeline.jobs",
    "diagnose": "pipeline.doctor",
    "MateoBulkError": "pipeline.errors",
    "InputError": "pipeline.errors",
    "RunStopped": "pipeline.errors",
    "AuthError": "pipeline.errors",
    "EndpointError": "pipeline.errors",
    "Interrupted": "pipeline.errors",
    "SafetyError": "pipeline.errors",
    "RemoteError": "pipeline.errors",
    "TransientError": "pipeline.errors",
    "PermanentError": "pipeline.errors",
    "QuotaExhausted": "pipeline.quota",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # the names as type checkers and editors see them (`X as X`: re-exported)
    from pipeline.doctor import diagnose as diagnose
    from pipeline.errors import AuthError as AuthError
    from pipeline.errors import EndpointError as EndpointError
    from pipeline.errors import InputError as InputError
    from pipeline.errors import Interrupted as Interrupted
    from pipeline.errors import MateoBulkError as MateoBulkError
    from pipeline.errors import PermanentError as PermanentError
    from pipeline.errors import RemoteError as RemoteError
    from pipeline.errors import RunStopped as RunStopped
    from pipeline.errors import SafetyError as SafetyError
    from pipeline.errors import TransientError as TransientError
    from pipeline.jobs import load_job as load_job
    from pipeline.jobs import plan_job as plan_job
    from pipeline.jobs import run_job as run_job
    from pipeline.jobs import run_job_async as run_job_async
    from pipeline.quota import QuotaExhausted as QuotaExhausted
    from pipeline.runner import RunSummary as RunSummary
    from pipeline.runner import apply_plan as apply_plan
    from pipeline.runner import export_report as export_report
    from pipeline.runner import plan as plan
    from pipeline.runner import plan_async as plan_async
    from pipeline.runner import resume as resume
    from pipeline.runner import resume_async as resume_async
    from pipeline.runner import run as run
    from pipeline.runner import run_async as run_async
    from pipeline.runner import run_status as run_status
    from pipeline.settings import RunSettings as RunSettings
