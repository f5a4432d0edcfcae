"""The README and docs/ stay navigable and in step with the code: the generated references are
current, every page is linked, every link resolves, and nothing cites files outside the repo."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cogapp import Cog

from pipeline.cli.parser import build_parser
from pipeline.sandbox.config import switch_fields
from tests.helpers import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
GENERATED = [DOCS / "commands.md", DOCS / "sandbox.md"]
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_LIMIT = 12 * 1024

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images, outside code blocks."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [target or image for target, image in _LINK.findall(text)]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_flag_of_every_command_is_in_the_commands_page(command: str) -> None:
    """Each long flag that `mateo-bulk COMMAND --help` lists is in docs/commands.md, under a
    section of that command."""
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    assert f"\n## mateo-bulk {command}\n" in text
    flags = [
        option
        for action in subcommands()[command]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [flag for flag in flags if f"`{flag}" not in text]
    assert not missing, f"not in docs/commands.md: {missing}"


def test_every_sandbox_switch_is_in_the_sandbox_page() -> None:
    """Each field of SandboxConfig is named in docs/sandbox.md's switch table."""
    text = (DOCS / "sandbox.md").read_text(encoding="utf-8")
    missing = [spec.name for spec in switch_fields() if f"`{spec.name}`" not in text]
    assert not missing, f"not in docs/sandbox.md: {missing}"


def test_the_generated_references_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    """`cog --check` finds nothing to change in the generated pages (after a change to a flag or
    a sandbox switch: `.venv/bin/cog -r docs/commands.md docs/sandbox.md`)."""
    status = Cog().main(["cog", "--check", *map(str, GENERATED)])
    assert status == 0, (
        "docs are stale: run `.venv/bin/cog -r docs/commands.md docs/sandbox.md`\n"
        + capsys.readouterr().out
    )


def test_the_readme_is_at_most_12_kib() -> None:
    """The README stays a front page; the reference lives in docs/."""
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes, more than {README_LIMIT:,}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    """Each docs/*.md is reachable from the README."""
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README)}
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not missing, f"not linked from README.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    """Each relative link of the page points to a file in the repository, and each `#anchor`
    to a heading of its page."""
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page.resolve()
        if not file.is_relative_to(REPO.resolve()) or not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"broken links in {page.relative_to(REPO)}: {broken}"


def _repository_files() -> list[Path]:
    """The files of the repository: tracked or not ignored, as git sees them."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git cannot list the repository's files here")
    names = [name for name in os.fsdecode(listed).split("\0") if name]
    return [REPO / name for name in names if (REPO / name).is_file()]


# Places outside the repository that texts have cited: a shared folder of notes, research
# notes, this machine's checkout. A reader of the repository has none of them.
_OUTSIDE = re.compile(r"(?<![\w.-])(?:\.\./)*(?:shared|research)/[\w.-]+|(?<![\w.])/work/")


def test_no_file_cites_a_path_outside_the_repository() -> None:
    """No text in the repository points at files a reader of it does not have."""
    this_file = Path(__file__).resolve()
    citing = []
    for file in _repository_files():
        if file.resolve() == this_file:
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images, Parquet, spreadsheets
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line):
                citing.append(f"{file.relative_to(REPO)}:{number}: {line.strip()}")
    assert not citing, "\n".join(citing)


def test_the_readme_test_command_is_what_ci_runs() -> None:
    """The README's test command is the one .ci/run runs."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    line = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    assert line in readme.splitlines()
    assert ".venv/bin/pip install --quiet -e '.[test]' && .venv/bin/pytest" in ci
    assert "python3 -m venv .venv" in ci


def test_the_generator_runs_from_any_directory(tmp_path: Path) -> None:
    """`cog --check` on the pages works from outside the repository (the cog blocks find
    docs/reference.py next to the page, not in the working directory)."""
    result = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", *map(str, GENERATED)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
