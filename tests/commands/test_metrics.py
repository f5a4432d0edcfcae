"""`--metrics-file` and a job's `metrics_file`: a run's figures for node_exporter's textfile
collector, read back with prometheus_client's own parser of the text format."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.cli.main import main
from pipeline.commands.metrics import RunFigures, metrics_text, write_metrics
from pipeline.core.models import Outcome
from pipeline.sandbox import Sandbox
from tests.helpers import SAMPLE, read_report, run_cli, write_csv

UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"
#: One sample line of the text format as node_exporter accepts it: a name, labels, a number.
SAMPLE_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\} '
    r"-?[0-9.e+]+$"
)


def parse(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The file as {metric: {labels: value}}, after checks stricter than the parser's own: every
    line is a comment or one well-formed sample, each metric has HELP and TYPE gauge before its
    samples, and no series is there twice (the collector would fail the whole scrape)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    declared: set[str] = set()
    seen: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind == "gauge", line
            declared.add(name)
            continue
        assert SAMPLE_LINE.match(line), line
        assert line.split("{")[0] in declared, f"no TYPE before {line}"
        series = line.rsplit(" ", 1)[0]
        assert series not in seen, f"twice: {series}"
        seen.add(series)
    figures: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge"
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            figures.setdefault(sample.name, {})[labels] = sample.value
    return figures


def value(figures: dict[str, dict[tuple[tuple[str, str], ...], float]], metric: str) -> float:
    """The one value of a metric without labels other than `name`."""
    (only,) = figures[f"mateo_bulk_{metric}"].values()
    return only


def rows_by_outcome(
    figures: dict[str, dict[tuple[tuple[str, str], ...], float]],
) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: count
        for labels, count in figures["mateo_bulk_last_run_rows"].items()
    }


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sandbox: Sandbox) -> None:
    """In-process CLI calls run in tmp_path, with the sandbox's token."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MATEO_API_TOKEN", sandbox.token)
    monkeypatch.delenv("MATEO_BASE_URL", raising=False)


def run_args(sandbox: Sandbox, source: Path | str, *more: str) -> list[str]:
    return [
        "run", str(source), "--base-url", sandbox.base_url, "--rate", "unlimited", "--quiet",
        "--yes", *more,
    ]  # fmt: skip


# --- run ----------------------------------------------------------------------------------------


@pytest.mark.long
def test_run_writes_the_figures_of_the_sample_data(
    sandbox: Sandbox, tmp_path: Path, env: None
) -> None:
    """The sample data's run: rows by outcome as its report counts them, the requests and 429s
    the sandbox received, exit 1, every outcome present (zeros too) and labelled by the file."""
    (tmp_path / "textfile").mkdir()
    metrics = tmp_path / "textfile" / "reassign.prom"
    sandbox.configure(rate=20.0, burst=2)  # so that some requests get a 429 and are retried
    before = time.time()
    code = main(run_args(sandbox, SAMPLE / "reassign.csv", "--run-dir", "run",
                         "--metrics-file", str(metrics)))  # fmt: skip
    assert code == 1  # the sample holds unknown ids and invalid rows
    figures = parse(metrics)
    reported = Counter(line["outcome"] for line in read_report(tmp_path / "run" / "report.csv"))
    assert rows_by_outcome(figures) == {
        outcome.value: reported.get(outcome.value, 0) for outcome in Outcome
    }
    assert value(figures, "last_run_input_rows") == sum(reported.values()) == 96
    stats = sandbox.stats()
    assert stats["rate_limited"] > 0, "the sandbox's limit should have answered some 429s"
    assert value(figures, "last_run_requests") == stats["requests"]
    assert value(figures, "last_run_rate_limited_responses") == stats["rate_limited"]
    assert value(figures, "last_run_retries") >= stats["rate_limited"]
    assert value(figures, "last_run_exit_code") == 1
    assert value(figures, "last_run_dry_run") == 0
    assert before <= value(figures, "last_run_timestamp_seconds") <= time.time()
    assert 0 < value(figures, "last_run_duration_seconds") < time.time() - before + 1
    # Exit 1 is no success, and there was none before: no last-success series yet.
    assert "mateo_bulk_last_success_timestamp_seconds" not in figures
    names = {dict(labels)["name"] for series in figures.values() for labels in series}
    assert names == {"reassign"}


def test_a_failed_run_keeps_the_last_success(sandbox: Sandbox, tmp_path: Path, env: None) -> None:
    """A success sets the last-success time; a later run that fails (exit 2 before anything is
    sent, then exit 1) rewrites the file with its own exit code and keeps that time."""
    metrics = tmp_path / "nightly.prom"
    row = next(row for row in sandbox.rows() if row["status"] != "archived")
    good = write_csv(tmp_path / "good.csv", [{"conversation_id": row["id"], "status": "archived"}])
    assert main(run_args(sandbox, good, "--run-dir", "r1", "--metrics-file", str(metrics))) == 0
    first = parse(metrics)
    success = value(first, "last_success_timestamp_seconds")
    assert success == value(first, "last_run_timestamp_seconds")

    time.sleep(0.01)  # the next run ends at a later time, to tell them apart
    missing = tmp_path / "missing.csv"
    assert main(run_args(sandbox, missing, "--run-dir", "r2", "--metrics-file", str(metrics))) == 2
    second = parse(metrics)
    assert value(second, "last_run_exit_code") == 2
    assert value(second, "last_run_timestamp_seconds") > success
    assert value(second, "last_success_timestamp_seconds") == success
    assert set(rows_by_outcome(second).values()) == {0}

    unknown = write_csv(tmp_path / "unknown.csv", [{"conversation_id": UNKNOWN_ID}])
    code = main(run_args(sandbox, unknown, "--set", "status=archived", "--run-dir", "r3",
                         "--metrics-file", str(metrics)))  # fmt: skip
    assert code == 1
    third = parse(metrics)
    assert value(third, "last_run_exit_code") == 1
    assert rows_by_outcome(third)["not_found"] == 1
    assert value(third, "last_success_timestamp_seconds") == success


def test_a_dry_run_is_no_success(tmp_path: Path, env: None) -> None:
    """A dry run exits 0 but changes nothing: its figures are written, no last success."""
    metrics = tmp_path / "dry.prom"
    code = main(["run", str(SAMPLE / "reassign.csv"), "--dry-run", "--quiet", "--run-dir", "r",
                 "--metrics-file", str(metrics)])  # fmt: skip
    assert code == 1  # invalid rows
    figures = parse(metrics)
    assert value(figures, "last_run_dry_run") == 1
    assert value(figures, "last_run_requests") == 0
    assert rows_by_outcome(figures)["planned"] == 90
    assert "mateo_bulk_last_success_timestamp_seconds" not in figures


def test_the_file_is_replaced_whole_and_readable_by_node_exporter(tmp_path: Path) -> None:
    """Each write renames a new file over the old (a new inode: a reader holding the old one
    never sees it change), mode 0644 for node_exporter's own user, no temporary file left."""
    metrics = tmp_path / "job.prom"
    write_metrics(metrics, RunFigures(exit_code=0, finished_at=1_700_000_000.5))
    first = os.stat(metrics)
    with metrics.open(encoding="utf-8") as held:
        write_metrics(metrics, RunFigures(exit_code=1, finished_at=1_700_000_100.0))
        assert 'last_run_exit_code{name="job"} 0' in held.read()
    assert os.stat(metrics).st_ino != first.st_ino
    assert os.stat(metrics).st_mode & 0o777 == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job.prom"]
    figures = parse(metrics)
    assert value(figures, "last_run_exit_code") == 1
    assert value(figures, "last_success_timestamp_seconds") == 1_700_000_000.5


def test_a_name_with_quotes_and_backslashes_is_escaped() -> None:
    """The label comes from the file name, which may hold anything a label value must escape."""
    text = metrics_text(RunFigures(exit_code=0), name='we"ird\\name', last_success=None)
    names = {
        sample.labels["name"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert names == {'we"ird\\name'}


# --- Bad paths: exit 2, nothing sent ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("metrics.txt", "the name must end in .prom"),
        ("no-such-dir/run.prom", "no-such-dir does not exist; create it first"),
        ("a-file/run.prom", "a-file is not a directory"),
        ("a-dir.prom", "is a directory; give a file name"),
        # Nobody creates files in /proc, root included: a real failed try, not a permission bit.
        ("/proc/mateo-bulk.prom", "cannot write in /proc"),
    ],
)
def test_a_bad_metrics_path_is_exit_2_before_anything_is_sent(
    sandbox: Sandbox, tmp_path: Path, path: str, message: str
) -> None:
    """`run` (a real process): one line naming the flag and what to do, no traceback, no request
    and no run directory."""
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    (tmp_path / "a-dir.prom").mkdir()
    rows = write_csv(tmp_path / "in.csv", [{"conversation_id": sandbox.rows()[0]["id"]}])
    result = run_cli(
        *run_args(sandbox, rows, "--set", "status=open", "--run-dir", "run",
                  "--metrics-file", path),
        token=sandbox.token,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mateo-bulk: --metrics-file"), result.stderr
    assert message in lines[0]
    assert sandbox.stats()["requests"] == 0
    assert not (tmp_path / "run").exists()


def test_a_write_that_fails_at_the_end_is_a_warning(sandbox: Sandbox, tmp_path: Path) -> None:
    """The directory was there at the start and is gone at the end (removed during the run):
    one warning line, and the exit code is the run's own."""
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    rows = [
        {"conversation_id": row["id"], "status": "archived"}
        for row in sandbox.rows()
        if row["status"] != "archived"
    ][:6]
    source = write_csv(tmp_path / "in.csv", rows)
    # One PATCH a row at 4 requests a second: the run lasts a few seconds after its journal
    # appears, time enough to take the directory away.
    command = [
        sys.executable, "-m", "pipeline", "run", str(source), "--base-url", sandbox.base_url,
        "--rate", "4", "--batch-size", "1", "--quiet", "--yes", "--run-dir", "run",
        "--metrics-file", str(textfile / "run.prom"),
    ]  # fmt: skip
    environment = {**os.environ, "MATEO_API_TOKEN": sandbox.token}
    with subprocess.Popen(
        command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    ) as process:  # fmt: skip
        deadline = time.monotonic() + 30
        while not (tmp_path / "run" / "journal.sqlite").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run never began"
            time.sleep(0.02)
        textfile.rmdir()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stderr.strip().splitlines() == [
        f"mateo-bulk: warning: --metrics-file {textfile / 'run.prom'} was not written (No such "
        "file or directory); the run's outcome and exit code are unchanged"
    ]


def test_a_job_files_metrics_file_must_end_in_prom(tmp_path: Path) -> None:
    """The job file's key is checked on load: file, line and key, exit 2."""
    write_csv(tmp_path / "rows.csv", [{"conversation_id": UNKNOWN_ID}])
    job = tmp_path / "bad.toml"
    job.write_text(
        '[source]\nfile = "rows.csv"\n[set]\nstatus = "open"\n[output]\nmetrics_file = "m.txt"\n',
        encoding="utf-8",
    )
    result = run_cli("job", job, "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{job}, line 6: output.metrics_file: must name a file ending in .prom" in result.stderr
    assert "Traceback" not in result.stderr


# --- job and resume ------------------------------------------------------------------------------


def write_job(tmp_path: Path, sandbox: Sandbox, *, extra: str = "") -> Path:
    """A file job of 2 rows, one of them an unknown id, writing textfile/nightly.prom."""
    known = next(row["id"] for row in sandbox.rows() if row["status"] != "archived")
    write_csv(tmp_path / "rows.csv", [{"conversation_id": known}, {"conversation_id": UNKNOWN_ID}])
    (tmp_path / "textfile").mkdir(exist_ok=True)
    job = tmp_path / "nightly.toml"
    job.write_text(
        '[source]\nfile = "rows.csv"\n[set]\nstatus = "archived"\n'
        f'[limits]\nrate = "unlimited"\n{extra}'
        '[output]\nrun_dir = "run-nightly"\nmetrics_file = "textfile/nightly.prom"\n',
        encoding="utf-8",
    )
    return job


def test_job_writes_its_metrics_file_and_check_leaves_it_alone(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`mateo-bulk job` (a real process) writes the job file's metrics_file with the job's exit
    code; `job --check` afterwards neither writes nor replaces it."""
    job = write_job(tmp_path, sandbox)
    result = run_cli("job", job, "--base-url", sandbox.base_url, token=sandbox.token, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    metrics = tmp_path / "textfile" / "nightly.prom"
    figures = parse(metrics)
    assert value(figures, "last_run_exit_code") == 1
    counts = rows_by_outcome(figures)
    assert (counts["updated"], counts["not_found"]) == (1, 1)
    assert value(figures, "last_run_requests") == sandbox.stats()["requests"]
    written = metrics.read_bytes(), os.stat(metrics).st_ino
    checked = run_cli("job", job, "--check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert (metrics.read_bytes(), os.stat(metrics).st_ino) == written


def test_a_stopped_job_then_its_resume(sandbox: Sandbox, tmp_path: Path, env: None) -> None:
    """A job out of requests (exit 3, resumable) says so; `resume --metrics-file` (the flag,
    not stored with the run) writes the resumed run's figures over it, counts of every session
    and requests of its own."""
    job = write_job(tmp_path, sandbox, extra="max_requests = 1\n")
    assert main(["job", str(job), "--base-url", sandbox.base_url, "--quiet"]) == 3
    metrics = tmp_path / "textfile" / "nightly.prom"
    stopped = parse(metrics)
    assert value(stopped, "last_run_exit_code") == 3
    assert rows_by_outcome(stopped)["skipped"] >= 1
    requests_before = sandbox.stats()["requests"]
    code = main(
        ["resume", "run-nightly", "--max-requests", "10", "--quiet", "--metrics-file", str(metrics)]
    )
    assert code == 1  # the unknown id: not_found
    resumed = parse(metrics)
    assert value(resumed, "last_run_exit_code") == 1
    counts = rows_by_outcome(resumed)
    assert (counts["updated"], counts["not_found"], counts["skipped"]) == (1, 1, 0)
    assert value(resumed, "last_run_requests") == sandbox.stats()["requests"] - requests_before
