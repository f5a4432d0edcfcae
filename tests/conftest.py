"""Shared fixtures: a running sandbox on loopback, fresh for every test."""

from __future__ import annotations

import compileall
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.api import retry
from pipeline.sandbox import Sandbox, running_sandbox

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Bytecode for pipeline/, written once before any test starts a `python -m pipeline`.

    Where the environment sets PYTHONDONTWRITEBYTECODE (as the Docker image does), no process
    writes it, and every CLI a test starts compiled the whole package from source again: an
    eighth of its CPU time, hundreds of times a run. The setting does not stop reading bytecode,
    so the CLIs keep the environment they are given. In the controller only: the xdist workers
    start after it (writing is atomic anyway, and a failure only costs the time).
    """
    if not hasattr(config, "workerinput"):
        compileall.compile_dir(REPO / "pipeline", quiet=2)
        _write_rewritten_tests(config)


def _write_rewritten_tests(config: pytest.Config) -> None:
    """The test modules with pytest's assert rewriting, cached once before the workers start.

    Each xdist worker imports every test module, and pytest rewrites its asserts first (~3 s of
    CPU for the whole tree); under PYTHONDONTWRITEBYTECODE no worker caches the result, and on
    a fresh clone all of them rewrite at once anyway. Written here, the workers read it. This
    leans on pytest's internals, so any surprise only skips it: the workers then rewrite as
    they always did.
    """
    try:
        from _pytest.assertion import assertstate_key
        from _pytest.assertion.rewrite import PYC_TAIL, _rewrite_test, _write_pyc, get_cache_dir

        if config.getoption("assertmode") != "rewrite":
            return
        state = config.stash[assertstate_key]
        for path in sorted((REPO / "tests").rglob("test_*.py")):
            cache = get_cache_dir(path)
            cache.mkdir(exist_ok=True)
            source_hash, code = _rewrite_test(path, config)
            _write_pyc(state, code, source_hash, cache / (path.stem + PYC_TAIL))
    except Exception:  # an optimisation only: never a reason for the suite not to run
        return


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long tests go first: those that declare a longer timeout than the default, longest
    first, then those marked `long` (several seconds each).

    The tests run in parallel (pytest-xdist, see addopts in pyproject.toml): a long test
    started last would run alone at the end while the other workers sit idle.
    """
    default = float(config.getini("timeout") or 0)  # pytest-timeout's, from pyproject.toml

    def declared(item: pytest.Item) -> tuple[float, bool]:
        marker = item.get_closest_marker("timeout")
        seconds = 0.0
        if marker is not None:
            seconds = float(marker.kwargs.get("timeout", marker.args[0] if marker.args else 0) or 0)
        return (seconds if seconds > default else 0.0), item.get_closest_marker("long") is not None

    items.sort(key=declared, reverse=True)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def _shared_sandbox() -> Iterator[Sandbox]:
    # One server for the session; each test gets it back in its starting state (see `sandbox`),
    # which costs microseconds where a new server costs a fifth of a second.
    with running_sandbox() as server:
        yield server


@pytest.fixture
def sandbox(_shared_sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A running sandbox seeded from sample_data/, with default switches and zeroed stats.

    Every test that uses it also proves the tool's first promise: the test fails if the sandbox
    counted a safety violation (a PATCH without exactly the id filter that bounds it), unless
    it is marked `safety_violations_expected` (the sandbox's own tests of that count).
    """
    _shared_sandbox.reset()
    yield _shared_sandbox
    violations = _shared_sandbox.stats()["safety_violations"]
    _shared_sandbox.reset()
    if request.node.get_closest_marker("safety_violations_expected") is None:
        assert violations == 0, f"the sandbox counted {violations} safety violations"


@pytest.fixture
def sandbox_client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    """An httpx client for the sandbox's /api/v1, with the token set."""
    with httpx.Client(
        base_url=sandbox.base_url,
        headers={"Authorization": f"Bearer {sandbox.token}"},
        timeout=10,
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def _private_working_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test runs in an empty directory of its own, and so does every CLI it starts.

    The tests run in parallel (pytest-xdist), all from the repo root by default: a run without
    --run-dir would write runs/<UTC second>-<input>/ there, where two workers can pick the same
    name in the same second. Tests reach repo files by absolute paths (tests.helpers.REPO), and
    a `python -m pipeline` they start imports this checkout's package, not the working
    directory's.
    """
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )


@pytest.fixture(autouse=True)
def _private_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own quota ledger, so tests never share (or spend) one budget."""
    monkeypatch.setenv("MATEO_BULK_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait a tenth of their usual backoff (its base 50 ms, not 0.5 s).

    For tests of what retries end in under a high fault rate (every row right, the journal,
    the undo file), not of how long they wait: at 40 % faults and 8 attempts a row's full waits
    reach 30 s, and one such test took 16 s. test_client pins the waits themselves, and the
    Retry-After a server sends still sets the floor of a wait, as always. Not shorter: on a
    busy machine, eight attempts with 0.5 s timeouts inside a second or two ran out (a 10 ms
    base failed a group of rows once in a loaded full suite).
    """
    monkeypatch.setattr(retry, "BASE_BACKOFF_SECONDS", 0.05)
