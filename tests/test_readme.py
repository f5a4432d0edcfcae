"""The README stays in step with the commands' --help."""

from __future__ import annotations

import argparse

import pytest

from pipeline.cli import build_parser
from tests.helpers import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_flag_of_every_command_is_in_the_readme(command: str) -> None:
    """Each long flag that `mateo-bulk COMMAND --help` lists is documented in the README."""
    assert f"mateo-bulk {command}" in README
    flags = [
        option
        for action in subcommands()[command]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [flag for flag in flags if f"`{flag}" not in README]
    assert not missing, f"not in README.md: {missing}"


def test_the_readme_test_command_is_what_ci_runs() -> None:
    """The quick start's test command is the one .ci/run runs."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/pip install -e '.[test]' && .venv/bin/pytest" in README
    assert ".venv/bin/pip install --quiet -e '.[test]' && .venv/bin/pytest" in ci
