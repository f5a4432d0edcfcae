"""DataFrames both ways: a pandas DataFrame or a pyarrow Table as a run's input, the report back
as a DataFrame; and the library inside a running event loop, as in Jupyter."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline import InputError, RunSettings
from pipeline.core.models import Outcome
from pipeline.sandbox import Sandbox
from pipeline.stages.frames import report_frame
from tests.helpers import REPO, SAMPLE, read_report, run_cli


def sample_frame() -> pd.DataFrame:
    """The sample input as a notebook reads it: each cell as written (see docs/python.md)."""
    return pd.read_csv(SAMPLE / "reassign.csv", dtype=str, keep_default_na=False)


def settings_for(sandbox: Sandbox, source: Any, run_dir: Path, **more: Any) -> RunSettings:
    return RunSettings(
        source, token=sandbox.token, base_url=sandbox.base_url, rate=None, run_dir=run_dir, **more
    )


def as_cells(report: pd.DataFrame) -> list[dict[str, str]]:
    """report_frame()'s rows as the report file's cells: <NA> is an empty cell."""
    return [
        {column: "" if pd.isna(value) else str(value) for column, value in row.items()}
        for row in report.to_dict("records")
    ]


# --- A frame in, the report out -----------------------------------------------------------------


def test_a_dataframe_runs_as_its_csv_file_does(sandbox: Sandbox, tmp_path: Path) -> None:
    """run(df) of the sample data: the same report, row for row, as run("reassign.csv") against
    the same starting rows; report_frame() is that report's cells, one row per input row."""
    from_file = pipeline.run(settings_for(sandbox, SAMPLE / "reassign.csv", tmp_path / "file"))
    sandbox.reset()
    frame = sample_frame()
    from_frame = pipeline.run(settings_for(sandbox, frame, tmp_path / "frame"))
    assert from_frame.exit_code == from_file.exit_code == 1
    assert dict(from_frame.counts) == dict(from_file.counts)
    assert from_frame.counts[Outcome.UPDATED] == 85
    assert from_frame.report_path is not None and from_file.report_path is not None
    file_report = read_report(from_file.report_path)
    assert read_report(from_frame.report_path) == file_report
    report = from_frame.report_frame()
    assert len(report) == len(frame) == 96
    assert report["row"].tolist() == list(range(1, 97))
    assert as_cells(report) == file_report
    # The frame was kept in the run directory as the run's input.
    kept = pq.read_table(tmp_path / "frame" / "input.parquet").to_pandas()
    pd.testing.assert_frame_equal(kept, frame, check_dtype=False)


def test_a_pyarrow_table_runs_as_a_dataframe(sandbox: Sandbox, tmp_path: Path) -> None:
    """A pyarrow Table (the sample's Parquet twin) gives the same report as the DataFrame."""
    from_frame = pipeline.run(settings_for(sandbox, sample_frame(), tmp_path / "frame"))
    sandbox.reset()
    table = pq.read_table(SAMPLE / "reassign.parquet")
    assert isinstance(table, pa.Table)
    from_table = pipeline.run(settings_for(sandbox, table, tmp_path / "table"))
    assert dict(from_table.counts) == dict(from_frame.counts)
    pd.testing.assert_frame_equal(from_table.report_frame(), from_frame.report_frame())


def test_report_frame_has_the_report_types(sandbox: Sandbox, tmp_path: Path) -> None:
    """Nullable integers (<NA> for a row never sent), a categorical of every outcome, strings:
    whatever format the report file has (here Parquet)."""
    summary = pipeline.run(
        settings_for(sandbox, sample_frame(), tmp_path / "run", report=tmp_path / "report.parquet")
    )
    report = summary.report_frame()
    assert str(report["row"].dtype) == "Int64"
    assert str(report["http_status"].dtype) == str(report["attempts"].dtype) == "Int32"
    assert isinstance(report["outcome"].dtype, pd.CategoricalDtype)
    outcomes = [outcome.value for outcome in Outcome]
    assert list(report["outcome"].cat.categories) == outcomes
    assert report["outcome"].value_counts()["failed"] == 0  # a category with no row still shows
    for column in ("conversation_id", "error_message", "target_status", "before_assignee_id"):
        assert isinstance(report[column].dtype, pd.StringDtype), column
    invalid = report[report["outcome"] == "invalid"]
    assert len(invalid) == 6 and invalid["http_status"].isna().all()
    updated = report[report["outcome"] == "updated"]
    assert (updated["http_status"] == 200).all()
    # "null" (unassign) stays the report's "null", apart from <NA> (not set).
    unassigned = report[report["target_assignee_id"] == "null"]
    assert len(unassigned) > 0 and unassigned["target_inbox_id"].notna().all()


def test_report_frame_of_a_dry_run(tmp_path: Path) -> None:
    """A dry run of a frame needs no server: every valid row `planned`, sent by no one."""
    summary = pipeline.run(RunSettings(sample_frame(), dry_run=True, run_dir=tmp_path / "dry"))
    report = summary.report_frame()
    assert report["outcome"].value_counts()[["planned", "invalid"]].tolist() == [90, 6]
    assert (report["attempts"] == 0).all() and report["http_status"].isna().all()


def test_a_plan_filtered_in_pandas_is_applied_as_given(sandbox: Sandbox, tmp_path: Path) -> None:
    """plan(df), then the plan read into pandas, cut to its first three `change` rows, and
    apply_plan(that frame): exactly those three conversations are changed, nothing else."""
    planned = pipeline.plan(settings_for(sandbox, sample_frame(), tmp_path / "plan"))
    assert planned.plan_path is not None
    plan = pd.read_csv(planned.plan_path, dtype=str, keep_default_na=False)
    chosen = plan[plan["decision"] == "change"].head(3)
    applied = pipeline.apply_plan(chosen, settings_for(sandbox, "unused", tmp_path / "apply"))
    assert applied.exit_code == 0
    assert applied.counts[Outcome.UPDATED] == 3
    assert sandbox.stats()["ids_updated"] == 3
    updated = applied.report_frame()["conversation_id"].tolist()
    assert updated == chosen["conversation_id"].str.lower().tolist()


def test_a_frame_that_is_no_plan_is_refused_by_name(sandbox: Sandbox, tmp_path: Path) -> None:
    """apply_plan of a frame without a plan's columns: one line naming the plan DataFrame (not
    the copy it was kept in), nothing sent, no run directory."""
    with pytest.raises(InputError) as raised:
        pipeline.apply_plan(sample_frame(), settings_for(sandbox, "unused", tmp_path / "apply"))
    assert str(raised.value).startswith("the plan DataFrame is not a plan file (no ")
    assert sandbox.stats()["requests"] == 0
    assert not (tmp_path / "apply").exists()


# --- Resume -------------------------------------------------------------------------------------


def test_a_stopped_frame_run_resumes_without_the_frame(sandbox: Sandbox, tmp_path: Path) -> None:
    """A frame run stopped by its request limit (exit 3) is resumed by `mateo-bulk resume` in
    another process, which has no frame: it reads the copy in the run directory and finishes."""
    run_dir = tmp_path / "run"
    stopped = pipeline.run(settings_for(sandbox, sample_frame(), run_dir, max_requests=3))
    assert stopped.exit_code == 3
    assert stopped.counts[Outcome.SKIPPED] > 0
    result = run_cli(
        "resume", run_dir, "--max-requests", "1000", "--quiet", token=sandbox.token, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr  # finished; the sample's bad rows remain
    status = pipeline.run_status(run_dir)
    assert status.state == "finished"
    assert status.meta["input_in_run_dir"] == "input.parquet"
    report = report_frame(run_dir)
    counts = report["outcome"].value_counts()
    assert (counts["updated"], counts["skipped"], counts["invalid"]) == (85, 0, 6)
    assert sandbox.stats()["ids_updated_more_than_once"] == {}


# --- Bad frames: one line, nothing sent ----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            pd.DataFrame({"id_": ["x"], "status": ["open"]}),
            "the DataFrame has no conversation_id (or id) column; its columns are 'id_', 'status'",
        ),
        (
            pd.DataFrame({"conversation_id": [], "status": []}),
            "the DataFrame has columns but no rows",
        ),
        (
            pd.DataFrame([["a", "b"]], columns=["conversation_id", "conversation_id"]),
            "the DataFrame has more than one column named 'conversation_id'",
        ),
        (
            pa.table({"conversation_id": [["a"]], "status": ["open"]}),
            "the DataFrame: column 'conversation_id' holds nested values",
        ),
    ],
    ids=["no-id-column", "no-rows", "two-id-columns", "nested"],
)
def test_a_bad_frame_is_refused_before_anything_is_sent(
    sandbox: Sandbox, tmp_path: Path, frame: Any, message: str
) -> None:
    """InputError with one line naming the DataFrame; no request, no run directory left."""
    with pytest.raises(InputError) as raised:
        pipeline.run(settings_for(sandbox, frame, tmp_path / "run"))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert sandbox.stats()["requests"] == 0
    assert not (tmp_path / "run").exists()


def test_a_column_the_run_does_not_read_may_hold_anything(tmp_path: Path) -> None:
    """Lists in a column beside the input's (tags, say) do not stop the run, as a nested id
    column does: only the columns read are held to one plain value per row."""
    frame = sample_frame().head(3)
    frame["tags"] = [["vip"], [], ["a", "b"]]
    summary = pipeline.run(RunSettings(frame, dry_run=True, run_dir=tmp_path / "dry"))
    assert summary.report_frame()["outcome"].tolist() == ["planned"] * 3


def test_a_column_of_mixed_types_is_judged_cell_by_cell(tmp_path: Path) -> None:
    """Numbers and text in one column (as spreadsheets give): each value as its text, so the
    number where a status belongs is an invalid row, not a refused frame."""
    frame = sample_frame().head(4)
    frame["status"] = pd.Series(["closed", 7, None, "open"], dtype=object)
    summary = pipeline.run(RunSettings(frame, dry_run=True, run_dir=tmp_path / "dry"))
    report = summary.report_frame()
    assert report["outcome"].tolist()[:2] == ["planned", "invalid"]
    assert "'7'" in report["error_message"][1]
    assert pd.isna(report["target_status"][2])  # None: "leave as it is"


# --- pandas only when used -----------------------------------------------------------------------


def test_a_run_from_a_file_does_not_import_pandas(tmp_path: Path) -> None:
    """pandas is an optional extra: a run from a CSV file (here a dry run) never loads it."""
    code = (
        "import sys, pipeline\n"
        f"pipeline.run(pipeline.RunSettings({str(SAMPLE / 'reassign.csv')!r}, dry_run=True,"
        f" run_dir={str(tmp_path / 'dry')!r}))\n"
        "print('pandas' in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert loaded.stdout.strip() == "False"


def test_report_frame_without_pandas_names_the_extra(tmp_path: Path) -> None:
    """Where pandas is not installed (sys.modules["pandas"] = None makes its import fail),
    report_frame() says which extra to install; the run itself did not need it."""
    code = (
        "import sys\n"
        "sys.modules['pandas'] = None\n"
        "import pipeline\n"
        f"summary = pipeline.run(pipeline.RunSettings({str(SAMPLE / 'reassign.csv')!r},"
        f" dry_run=True, run_dir={str(tmp_path / 'dry')!r}))\n"
        "summary.report_frame()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "ImportError: RunSummary.report_frame() needs pandas: pip install 'mateo-bulk[frames]' "
        "(pandas 2.2 or later)"
    )


# --- Inside a running event loop (Jupyter) -------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "twin"),
    [
        (lambda settings: pipeline.run(settings), "run_async"),
        (lambda settings: pipeline.plan(settings), "plan_async"),
        (lambda settings: pipeline.resume("nowhere", token="t"), "resume_async"),
    ],
    ids=["run", "plan", "resume"],
)
def test_a_sync_call_inside_a_running_loop_points_to_its_async_twin(
    tmp_path: Path, call: Any, twin: str
) -> None:
    """Not anyio's "Already running asyncio in this thread": a RuntimeError that names the
    `await` to use instead, before anything is done (and no "never awaited" warning, which
    pytest turns into an error)."""
    settings = RunSettings(sample_frame(), dry_run=True, run_dir=tmp_path / "run")

    async def in_a_notebook() -> None:
        call(settings)

    with pytest.raises(RuntimeError, match=rf"use `await pipeline\.{twin}\(\.\.\.\)` there"):
        asyncio.run(in_a_notebook())
    assert not (tmp_path / "run").exists()


def notebook_cells(path: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order: the cells of its notebook."""
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


async def run_cells(cells: list[str]) -> dict[str, Any]:
    """Run cells as IPython does: top-level `await` allowed, on the loop already running, one
    namespace for all."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for number, cell in enumerate(cells, 1):
        code = compile(cell, f"<cell {number}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result
    return namespace


def test_the_notebook_example_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/python.md's cells, run in order inside a running event loop from a directory with
    sample_data/: the frame's run, its report, the Table's run, the sandbox stopped."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(SAMPLE, tmp_path / "sample_data")
    cells = notebook_cells(REPO / "docs" / "python.md")
    assert len(cells) >= 5
    namespace = asyncio.run(run_cells(cells))
    summary, report = namespace["summary"], namespace["report"]
    assert summary.exit_code == 1
    assert summary.run_dir.resolve().parent == (tmp_path / "runs").resolve()
    assert (summary.run_dir / "input.parquet").exists()
    assert len(report) == 96 and report["outcome"].value_counts()["updated"] == 85
    assert namespace["again"].report_frame()["outcome"].value_counts()["unchanged"] == 85
