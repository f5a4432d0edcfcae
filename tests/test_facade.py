"""The library's public face: `from pipeline import …` names exactly these, and each resolves."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pipeline

PUBLIC = {
    "__version__",
    "RunSettings",
    "RunSummary",
    "run",
    "run_async",
    "resume",
    "resume_async",
    "plan",
    "plan_async",
    "apply_plan",
    "run_status",
    "export_report",
    "load_job",
    "resolve_job",
    "run_job",
    "run_job_async",
    "diagnose",
    "MateoBulkError",
    "InputError",
    "RunStopped",
    "AuthError",
    "EndpointError",
    "Interrupted",
    "SafetyError",
    "RemoteError",
    "TransientError",
    "PermanentError",
    "QuotaExhausted",
}


def test_the_public_names_are_pinned() -> None:
    """__all__ is exactly the documented public face: adding or dropping a name is deliberate."""
    assert set(pipeline.__all__) == PUBLIC


def test_every_public_name_resolves() -> None:
    """Each name imports, and the async twins are coroutine functions."""
    for name in PUBLIC:
        assert getattr(pipeline, name) is not None
    for name in ("run_async", "resume_async", "plan_async", "run_job_async", "diagnose"):
        assert inspect.iscoroutinefunction(getattr(pipeline, name)), name
    assert issubclass(pipeline.SafetyError, pipeline.MateoBulkError)


def test_no_subpackage_hides_a_public_name() -> None:
    """Importing every module of the package leaves each public name what it was: a subpackage
    named like a function (`pipeline.run`) would replace it as an attribute of `pipeline`."""
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if module.name != "pipeline.__main__":
            importlib.import_module(module.name)
    for name in PUBLIC - {"__version__"}:
        value = getattr(pipeline, name)
        assert not inspect.ismodule(value), name
        assert value.__module__.startswith("pipeline."), name


def test_importing_the_package_loads_no_stage() -> None:
    """`import pipeline` is cheap: the runner, the HTTP client and pandas load on first use."""
    code = (
        "import sys, pipeline; "
        "print(sorted(m for m in sys.modules if m.startswith(('pipeline.', 'httpx', 'pandas'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_plan_changes_nothing(sandbox, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """pipeline.plan reads the rows and writes plan.csv without a single PATCH."""
    from tests.helpers import write_csv

    rows = [{"conversation_id": row["id"], "status": "archived"} for row in sandbox.rows()[:5]]
    path = write_csv(tmp_path / "in.csv", rows)
    settings = pipeline.RunSettings(
        path, token=sandbox.token, base_url=sandbox.base_url, rate=None, run_dir=tmp_path / "r"
    )
    summary = pipeline.plan(settings)
    assert summary.plan_path is not None and summary.plan_path.exists()
    assert sandbox.stats()["updates"] == 0
