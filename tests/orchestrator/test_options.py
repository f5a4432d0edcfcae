"""A run option is written once, as a field of RunSettings: its flag, its job-file key and its
docs row all come from that one definition, and a new field with metadata gets all three."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.cli.parser import build_parser
from pipeline.commands.job_file import OPTION_NAMES, load_job
from pipeline.core.errors import InputError
from pipeline.orchestrator.options import Invalid, Number, RunOption
from pipeline.orchestrator.settings import RunSettings, run_options
from tests.helpers import REPO

DOCS = REPO / "docs"
#: A value each option accepts in a job file, and a flag's text that gives the same value.
GOOD = {
    "base_url": ("http://127.0.0.1:9", "http://127.0.0.1:9"),
    "rate": (1.5, "1.5"),
    "concurrency": (3, "3"),
    "batch_size": (20, "20"),
    "max_attempts": (2, "2"),
    "timeout": (4.0, "4"),
    "dry_run": (True, None),
    "run_dir": ("runs/x", "runs/x"),
    "report": ("out.csv", "out.csv"),
    "delimiter": (";", ";"),
    "sheet": ("Rows", "Rows"),
    "strict": (True, None),
    "transport": ("httpx", "httpx"),
    "daily_quota": (500, "500"),
    "max_requests": (7, "7"),
    "quota_reset_utc": ("06:30", "06:30"),
    "max_wait": (5.0, "5"),
    "wait": (True, None),
    "snapshot": (False, None),
    "guarded": (False, None),
    "max_changes": (9, "9"),
    "expect_rows": (11, "11"),
}


def command(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("no subcommands")


def test_every_run_option_is_covered_here() -> None:
    assert [option.name for option in run_options()] == list(GOOD)


@pytest.mark.parametrize("option", run_options(), ids=lambda option: option.name)
def test_flag_job_key_and_docs_row_come_from_the_field(option: RunOption, tmp_path: Path) -> None:
    # The flag: `run`, `plan`, `apply` and `job` all have it, with the field's help and dest.
    for name in ("run", "plan", "apply", "job"):
        actions = {a.option_strings[0]: a for a in command(name)._actions if a.option_strings}
        action = actions[option.flag]
        assert action.dest == option.name and action.help == option.help
    # The flag's value reaches RunSettings under the field's name.
    job_value, text = GOOD[option.name]
    argv = ["run", "in.csv", option.flag] + ([text] if text is not None else [])
    given = getattr(build_parser().parse_args(argv), option.name)
    if text is None:
        assert given is job_value is (not option.default)  # a switch turns the default around
    else:
        assert given == (Path(job_value) if option.name in ("run_dir", "report") else job_value)
    # The job key: [table] name, checked by the field's kind.
    assert option.name in OPTION_NAMES
    job = tmp_path / "job.toml"
    job.write_text(
        f'[set]\nstatus = "closed"\n[{option.table}]\n{option.name} = {json.dumps(job_value)}\n'
        + ('file = "rows.csv"\n' if option.table == "source" else '[source]\nfile = "rows.csv"\n'),
        encoding="utf-8",
    )
    assert load_job(job).options[option.name] == job_value
    # The docs: the job file's key table, and the flag in each command's table.
    from docs import reference

    assert reference.option_row(option) in (DOCS / "jobs.md").read_text(encoding="utf-8")
    assert f"| `{option.flag}" in (DOCS / "commands.md").read_text(encoding="utf-8")


def test_the_job_key_table_is_current() -> None:
    from cogapp import Cog

    assert Cog().main(["cog", "--check", str(DOCS / "jobs.md")]) == 0


def test_one_number_check_speaks_to_each_reader() -> None:
    """The same range, worded for argparse, a job file and RunSettings.check."""
    concurrency = Number(int, 1)
    with pytest.raises(ValueError, match=r"^'0' must be at least 1$"):
        concurrency.from_text("0")
    with pytest.raises(ValueError, match=r"^'x' is not a number$"):
        concurrency.from_text("x")
    with pytest.raises(Invalid, match=r"^must be at least 1, got 0 \(an integer\)$"):
        concurrency.from_toml(0)
    with pytest.raises(Invalid, match=r"^expected a whole number of at least 1, got 'x'"):
        concurrency.from_toml("x")
    with pytest.raises(InputError, match=r"^--concurrency must be at least 1$"):
        RunSettings(input="x", dry_run=True, concurrency=0).check()
    with pytest.raises(InputError, match=r"^--batch-size must be at most 100$"):
        RunSettings(input="x", dry_run=True, batch_size=101).check()
    with pytest.raises(InputError, match=r"^--timeout must be a positive number of seconds$"):
        RunSettings(input="x", dry_run=True, timeout=0).check()
    with pytest.raises(InputError, match=r"^--max-wait must be 0 or more seconds$"):
        RunSettings(input="x", dry_run=True, max_wait=-1).check()
    with pytest.raises(InputError, match=r"^--max-changes must be 0 or more rows$"):
        RunSettings(input="x", dry_run=True, max_changes=-1).check()
    with pytest.raises(
        InputError, match=r"^--rate must be a positive number of requests per second$"
    ):
        RunSettings(input="x", dry_run=True, rate=0).check()


_NEW_OPTION = textwrap.dedent(
    """
    import dataclasses, json, sys
    from pathlib import Path
    import pipeline.orchestrator.settings as settings
    from pipeline.orchestrator.options import Number, option, options_of

    # One edit: a field with its metadata. (Here on a subclass, before anything reads the
    # options, so that the repository's RunSettings stays as it is.)
    extended = dataclasses.make_dataclass(
        "Extended",
        [("max_rows", int | None, option(None, help="the most rows to read", group="sending",
                                         table="limits", kind=Number(int, 1), metavar="N"))],
        bases=(settings.RunSettings,),
        frozen=True,
    )
    settings.run_options = lambda: options_of(extended)

    from pipeline.cli.parser import build_parser
    from pipeline.commands.job_file import OPTION_NAMES, load_job
    from pipeline.core.errors import InputError
    sys.path.insert(0, "docs")
    import reference

    args = build_parser().parse_args(["run", "in.csv", "--max-rows", "3"])
    job = Path(sys.argv[1])
    job.write_text('[source]\\nfile = "r.csv"\\n[set]\\nstatus = "closed"\\n'
                   '[limits]\\nmax_rows = 0\\n', encoding="utf-8")
    try:
        load_job(job)
        refused = ""
    except InputError as error:
        refused = str(error)
    print(json.dumps({
        "flag": args.max_rows,
        "key": "max_rows" in OPTION_NAMES,
        "refused": refused,
        "row": reference.job_option_table(),
    }))
    """
)


def test_a_new_field_with_metadata_is_a_flag_a_job_key_and_a_docs_row(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NEW_OPTION, str(tmp_path / "job.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(result.stdout)
    assert found["flag"] == 3
    assert found["key"] is True
    assert found["refused"].endswith("limits.max_rows: must be at least 1, got 0 (an integer)")
    assert "| `[limits] max_rows` | `--max-rows` | the most rows to read |" in found["row"]


def test_settings_journaled_under_an_earlier_name_are_read_under_the_current_one() -> None:
    """A journal written when the query's filters were the setting `guard` resumes with them
    as `query_guard`: dropped as an unknown name, a resumed job would PATCH without them."""
    filters = {"status": "eq.open"}
    meta = {**RunSettings("in.csv").to_meta(), "guard": filters}
    del meta["query_guard"]
    assert RunSettings.from_meta(meta, token="t").query_guard == filters
