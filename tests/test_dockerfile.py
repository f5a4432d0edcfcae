"""The Dockerfile builds the image the Kubernetes CronJob of docs/operations.md runs
(`docker build` itself needs a Docker daemon and a registry, which the test machines do not
have: what can be checked without them is checked here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def test_the_image_runs_the_command_and_carries_the_version_the_docs_name() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    scripts = _project()["scripts"]
    assert isinstance(scripts, dict)
    (command,) = scripts
    assert f'ENTRYPOINT ["{command}"]' in dockerfile
    version = _project()["version"]
    tags = set(re.findall(r"registry\.example\.com/mateo-bulk:([\w.]+)", dockerfile))
    documented = "\n".join(
        (REPO / name).read_text() for name in ("README.md", "docs/operations.md")
    )
    readme_tags = set(re.findall(r"image: registry\.example\.com/mateo-bulk:([\w.]+)", documented))
    assert tags == readme_tags == {version}


@pytest.mark.long
def test_what_the_dockerfile_copies_is_enough_to_build_the_package(tmp_path: Path) -> None:
    """The build context is what .dockerignore lets through, and the image installs from what
    the Dockerfile copies: a wheel built from exactly those files holds the whole package."""
    copied = re.findall(r"^COPY (.+) \S+$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    context = tmp_path / "context"
    context.mkdir()
    for line in copied:
        for name in line.split():
            source = REPO / name
            assert source.exists(), name
            if source.is_dir():
                shutil.copytree(
                    source, context / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy(source, context / name)
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert sorted(path.name for path in context.iterdir()) == sorted(allowed)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("mateo_bulk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "pipeline").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert expected <= names, sorted(expected - names)
