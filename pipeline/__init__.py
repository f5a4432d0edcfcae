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
    "RunSettings": "pipeline.orchestrator.settings",
    "RunSummary": "pipeline.orchestrator.summary",
    "run": "pipeline.orchestrator.runner",
    "run_async": "pipeline.orchestrator.runner",
    "resume": "pipeline.orchestrator.runner",
    "resume_async": "pipeline.orchestrator.runner",
    "plan": "pipeline.orchestrator.runner",
    "plan_async": "pipeline.orchestrator.runner",
    "apply_plan": "pipeline.orchestrator.runner",
    "run_status": "pipeline.orchestrator.status",
    "export_report": "pipeline.orchestrator.status",
    "load_job": "pipeline.commands.job_file",
    "resolve_job": "pipeline.commands.jobs",
    "run_job": "pipeline.commands.jobs",
    "run_job_async": "pipeline.commands.jobs",
    "diagnose": "pipeline.commands.doctor.diagnosis",
    "MateoBulkError": "pipeline.core.errors",
    "InputError": "pipeline.core.errors",
    "RunStopped": "pipeline.core.errors",
    "AuthError": "pipeline.core.errors",
    "EndpointError": "pipeline.core.errors",
    "Interrupted": "pipeline.core.errors",
    "SafetyError": "pipeline.core.errors",
    "RemoteError": "pipeline.core.errors",
    "TransientError": "pipeline.core.errors",
    "PermanentError": "pipeline.core.errors",
    "QuotaExhausted": "pipeline.api.quota",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:  # the names as type checkers and editors see them (`X as X`: re-exported)
    from pipeline.api.quota import QuotaExhausted as QuotaExhausted
    from pipeline.commands.doctor.diagnosis import diagnose as diagnose
    from pipeline.commands.job_file import load_job as load_job
    from pipeline.commands.jobs import resolve_job as resolve_job
    from pipeline.commands.jobs import run_job as run_job
    from pipeline.commands.jobs import run_job_async as run_job_async
    from pipeline.core.errors import AuthError as AuthError
    from pipeline.core.errors import EndpointError as EndpointError
    from pipeline.core.errors import InputError as InputError
    from pipeline.core.errors import Interrupted as Interrupted
    from pipeline.core.errors import MateoBulkError as MateoBulkError
    from pipeline.core.errors import PermanentError as PermanentError
    from pipeline.core.errors import RemoteError as RemoteError
    from pipeline.core.errors import RunStopped as RunStopped
    from pipeline.core.errors import SafetyError as SafetyError
    from pipeline.core.errors import TransientError as TransientError
    from pipeline.orchestrator.runner import apply_plan as apply_plan
    from pipeline.orchestrator.runner import plan as plan
    from pipeline.orchestrator.runner import plan_async as plan_async
    from pipeline.orchestrator.runner import resume as resume
    from pipeline.orchestrator.runner import resume_async as resume_async
    from pipeline.orchestrator.runner import run as run
    from pipeline.orchestrator.runner import run_async as run_async
    from pipeline.orchestrator.settings import RunSettings as RunSettings
    from pipeline.orchestrator.status import export_report as export_report
    from pipeline.orchestrator.status import run_status as run_status
    from pipeline.orchestrator.summary import RunSummary as RunSummary
