"""Seeded random scenarios against the sandbox, and a checker for mateo-bulk's four promises.

What it proves. Each scenario draws, from `random.Random(seed)` alone: an input file of 10-150
rows (real, nonexistent and invalid ids; identical and conflicting duplicates; rows already at
their target; an unknown inbox now and then), the sandbox's proxy unknowns and faults, the CLI's
flags, a second writer that PATCHes some of the input's conversations to values no row asks for
while the run is under way, and SIGKILLs of the run (and maybe of its first resume) followed by
`resume` until the run finishes. It runs the real CLI (`python -m pipeline`, a subprocess)
against an in-process sandbox, then the undo file with faults off, and checks that

1. every PATCH of the CLI selects its rows with exactly one `id=eq.<uuid>` or
   `id=in.(<uuid>,...)` filter naming only ids of its input file;
2. no conversation that no valid input row names changed (nor one the undo file does not name,
   during the undo);
3. every report line agrees with the input (invalid rows, and only they, are `invalid`), the
   commits (`updated` only if the run's PATCH landed on it; `unchanged`, `not_found`,
   `conflict`, `invalid`, `rejected` never on a row the run changed) and the table (an `updated`
   row holds its target; an existing row is never `not_found`; identical rows agree);
4. no row was committed twice, unless the first answer was lost or a kill came while its result
   was not yet in the journal;
5. the undo puts back all three fields of every row the run changed and had read before, every
   such `updated` row is in undo.csv, and the undo leaves alone a row someone changed after the
   run;
6. no CLI invocation printed a traceback or exited with an unexpected code, and a finished run
   has a report of every row once, with no `skipped` row, whose exit code matches it.

Conditions, each encoded where it is checked: rows the second writer touched are left out of
what cannot hold for them (their final values, their undo, a `conflict` after a lost answer);
the undo is owed only for rows whose values before the run were read (`--no-snapshot`, or an API
that refuses the snapshot's reads, leaves none to restore).

Evidence. The sandbox's request log, enabled per scenario (`requests.jsonl`) and tapped
in-process where it is written (`SandboxState.log_request`), each entry completed with who sent
it (the CLI or the second writer), the phase (run or undo), the rows it updated with their
fields before and after (`SandboxState.update`) and the rows a GET returned. Plus the table
before the run, after it and after the undo, the journal at each kill, the report, the undo
file, and every invocation's exit code and output.

Run it (from the repository root):

    .venv/bin/python -m tests.scenarios --count 30 --seed 1 --jobs 2
    .venv/bin/python -m tests.scenarios --count 500 --seed 1 --jobs 2 --keep failing  # ~25 min
    .venv/bin/python -m tests.scenarios --count 1 --seed 17 --verbose --keep

Scenario i of a run uses seed S+i, so any scenario reproduces alone with `--count 1 --seed`.
One line is printed per violating scenario, then a summary by kind, then exactly
`N scenarios, V violations` (V counts violations, not scenarios); the exit status is 1 when
V > 0. `--keep` keeps a scenario's directory (input, run directories, request log, CLI output);
otherwise it is removed. A scenario's choices are deterministic; the timing of requests, kills
and writes is not, so a timing-dependent violation may need a few runs of its seed to show.
Kills and writes are timed from the run's first request (a quarter of kills from the CLI's
start), since the CLI's first second is Python starting up.
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import csv
import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any
from urllib.parse import parse_qsl

import httpx

from pipeline.sandbox import Sandbox, SandboxConfig, running_sandbox
from pipeline.sandbox.server import default_dataset
from tests.helpers import AGENTS, INBOXES, REPO, run_cli

FIELDS = ("inbox_id", "assignee_id", "status")
STATUSES = ("open", "closed", "archived")
COLUMNS = ("conversation_id", *FIELDS)
TOKEN = "scenario-runner-sandbox-token"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ID_EQ = re.compile(rf"eq\.({UUID.pattern})", re.IGNORECASE)
ID_IN = re.compile(rf"in\.\(({UUID.pattern}(?:,{UUID.pattern})*)\)", re.IGNORECASE)
#: The header the second writer sends, so the tap can tell its requests from the CLI's.
WRITER_HEADER = b"x-scenario-actor"
WRITER_NAME = b"second-writer"
#: Outcomes a report line may have once a run has finished (exit 0 or 1).
FINISHED_OUTCOMES = {
    "updated",
    "not_found",
    "rejected",
    "failed",
    "invalid",
    "conflict",
    "unchanged",
}
#: Outcomes that say the run did not change the row.
NOT_CHANGED_OUTCOMES = ("unchanged", "not_found", "conflict", "invalid", "rejected")
#: Switches for a resume "after the faults are fixed", and for the undo run.
FAULTS_OFF: dict[str, Any] = {
    "fault_500": 0.0,
    "fault_502": 0.0,
    "fault_503": 0.0,
    "fault_drop": 0.0,
    "fault_applied_503": 0.0,
    "cutoff_seconds": None,
    "latency_ms": 0.0,
}
CLI_TIMEOUT_SECONDS = 90.0
MAX_CONTINUATIONS = 5


# --- The scenario: everything drawn from the seed -----------------------------------------------


@dataclass(frozen=True)
class InputLine:
    """One data row of the input file, as written, and what it asks for."""

    row: int
    cells: tuple[str, str, str, str]
    #: The normalised uuid, or None when the cell is not one.
    conversation_id: str | None
    #: The values the row asks for (None = JSON null), or None when the row is invalid by itself.
    target: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class Kill:
    """A SIGKILL `after` seconds from the CLI's start, or from its first request to reach the
    sandbox (most of the CLI's first second is Python starting, which sends nothing)."""

    after: float
    from_first_request: bool

    def __str__(self) -> str:
        origin = "its first request" if self.from_first_request else "start"
        return f"{self.after:.2f} s after {origin}"


@dataclass(frozen=True)
class PlannedWrite:
    """A PATCH the second writer sends `after` seconds after the run's first request."""

    after: float
    conversation_id: str
    field: str
    value: str | None


@dataclass(frozen=True)
class Scenario:
    """Every choice of one scenario: input, switches, flags, second writer, kills."""

    seed: int
    lines: tuple[InputLine, ...]
    switches: tuple[tuple[str, Any], ...]
    flags: tuple[str, ...]
    writes: tuple[PlannedWrite, ...]
    kill_main: Kill | None
    kill_first_resume: Kill | None
    faults_off_for_resume: bool

    def describe(self) -> str:
        switches = ", ".join(f"{name}={value}" for name, value in self.switches)
        kills = "no kill"
        if self.kill_main is not None:
            kills = f"kill {self.kill_main}"
            if self.kill_first_resume is not None:
                kills += f", kill first resume {self.kill_first_resume}"
            kills += ", faults off for resume" if self.faults_off_for_resume else ""
        writes = "; ".join(
            f"{w.conversation_id} {w.field}={w.value} at {w.after:.2f} s" for w in self.writes
        )
        return (
            f"{len(self.lines)} rows; flags: {' '.join(self.flags)}; {kills}; "
            f"second writer: {writes or 'none'}; switches: {switches}"
        )


def table_rows() -> list[dict[str, Any]]:
    """The sandbox's starting table (sample_data/conversations.csv), by id."""
    return sorted((dict(row) for row in default_dataset().rows), key=lambda row: row["id"])


def parse_line(cells: tuple[str, str, str, str]) -> tuple[str | None, dict[str, str | None] | None]:
    """The id and target a row asks for, by the input rules of docs/input-and-report.md;
    target None = invalid."""
    conversation_id = cells[0].strip().lower()
    valid = bool(UUID.fullmatch(conversation_id))
    target: dict[str, str | None] = {}
    for name, raw in zip(FIELDS, cells[1:], strict=True):
        text = raw.strip().lower()
        if not text:
            continue
        if text == "null":
            valid = valid and name == "assignee_id"
            target[name] = None
        elif name == "status":
            valid = valid and text in STATUSES
            target[name] = text
        else:
            valid = valid and bool(UUID.fullmatch(text))
            target[name] = text
    return (
        conversation_id if UUID.fullmatch(conversation_id) else None,
        target if valid and target else None,
    )


def _cell(value: str | None) -> str:
    return "null" if value is None else value


def _draw_target(rng: Random, count: int) -> dict[str, str | None]:
    chosen = sorted(rng.sample(range(3), count))
    choices: dict[str, list[str | None]] = {
        "inbox_id": list(INBOXES),
        "assignee_id": [*AGENTS, None],
        "status": list(STATUSES),
    }
    return {FIELDS[i]: rng.choice(choices[FIELDS[i]]) for i in chosen}


def _cells(
    conversation_id: str, target: Mapping[str, str | None], rng: Random
) -> tuple[str, str, str, str]:
    """A row as a spreadsheet might write it: now and then in upper case, padded."""
    shout = rng.random() < 0.1
    written = f" {conversation_id.upper()} " if shout else conversation_id
    values = [_cell(target[name]) if name in target else "" for name in FIELDS]
    if shout and values[2]:
        values[2] = values[2].upper()
    return (written, values[0], values[1], values[2])


def _draw_lines(rng: Random, table: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The input's rows: the mix of kinds the promises are about."""
    free_ids = [row["id"] for row in table]
    rng.shuffle(free_ids)
    current = {row["id"]: row for row in table}
    written: list[tuple[str, str, str, str]] = []
    sent: list[tuple[str, dict[str, str | None]]] = []  # valid rows so far: (id, target)
    kinds = (
        ("change_one", 34),
        ("change_several", 22),
        ("at_target", 10),
        ("nonexistent", 6),
        ("invalid", 10),
        ("duplicate_identical", 7),
        ("duplicate_conflicting", 6),
        ("unknown_inbox", 2),
    )
    for _ in range(rng.randint(10, 150)):
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if kind.startswith("duplicate") and not sent:
            kind = "change_one"
        if kind == "change_one":
            conversation_id, target = free_ids.pop(), _draw_target(rng, 1)
        elif kind == "change_several":
            conversation_id, target = free_ids.pop(), _draw_target(rng, rng.randint(2, 3))
        elif kind == "at_target":
            conversation_id = free_ids.pop()
            names = sorted(rng.sample(FIELDS, rng.randint(1, 3)), key=FIELDS.index)
            target = {name: current[conversation_id][name] for name in names}
        elif kind == "nonexistent":
            conversation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            target = _draw_target(rng, rng.randint(1, 2))
        elif kind == "unknown_inbox":
            conversation_id = free_ids.pop()
            target = {"inbox_id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
        elif kind == "duplicate_identical":
            conversation_id, target = rng.choice(sent)
        elif kind == "duplicate_conflicting":
            conversation_id, first = rng.choice(sent)
            target = first
            while target == first:
                target = _draw_target(rng, rng.randint(1, 3))
        else:
            written.append(_invalid_cells(rng, free_ids, sent))
            continue
        written.append(_cells(conversation_id, target, rng))
        sent.append((conversation_id, target))
    return written


def _invalid_cells(
    rng: Random, free_ids: list[str], sent: list[tuple[str, dict[str, str | None]]]
) -> tuple[str, str, str, str]:
    """A row the tool must refuse: on a fresh id, or on one a valid row also names."""
    conversation_id = rng.choice(sent)[0] if sent and rng.random() < 0.3 else free_ids.pop()
    problem = rng.choice(("bad_id", "bad_status", "null_inbox", "bad_agent", "nothing"))
    if problem == "bad_id":
        return (rng.choice(("not-a-uuid", "12345", conversation_id[:-1])), "", "", "closed")
    if problem == "bad_status":
        return (conversation_id, "", "", "pending")
    if problem == "null_inbox":
        return (conversation_id, "null", "", "open")
    if problem == "bad_agent":
        return (conversation_id, "", "agent-7", "")
    return (conversation_id, "", "", "")


def _draw_switches(rng: Random) -> dict[str, Any]:
    """Proxy unknowns and a fault mix that keeps a run to a few seconds (see config.py)."""
    switches: dict[str, Any] = {
        "fault_seed": rng.randrange(2**31),
        "object_response": rng.choice(("off", "one", "first")),
        "select_returns_body": rng.random() < 0.3,
        "zero_match_404": rng.random() < 0.3,
        "force_single_object": rng.random() < 0.15,
        "drop_content_range": rng.random() < 0.3,
        "drop_prefer": rng.random() < 0.3,
        "default_status_open": rng.random() < 0.25,
        "max_rows": rng.choice((50, 20, 7)),
        "error_body": rng.choice(("mateo", "postgrest")),
    }
    if rng.random() < 0.25:
        return switches  # no faults at all
    # Every retry waits out the CLI's backoff (0.5 s base, full jitter), so faults stay rare.
    retry_after = rng.choice((0, 1))
    switches.update(
        fault_applied_503=rng.choice((0.0, 0.02, 0.05)),
        fault_drop=rng.choice((0.0, 0.02, 0.05)),
        fault_500=rng.choice((0.0, 0.02, 0.04)),
        # A 503 holds every worker for Retry-After: rarer when that is a whole second.
        fault_503=rng.choice((0.0, 0.02, 0.04) if retry_after == 0 else (0.0, 0.01, 0.02)),
        fault_503_retry_after=retry_after,
    )
    if rng.random() < 0.4:
        # Exponential latency past a short cut-off: about 2% or 8% of requests are cut off.
        switches.update(
            cutoff_seconds=0.1,
            latency_ms=rng.choice((25.0, 40.0)),
            latency_distribution="exponential",
            cutoff_commits=rng.random() < 0.5,
        )
    else:
        switches.update(latency_ms=rng.choice((0.0, 5.0, 15.0)), latency_distribution="uniform")
    return switches


def _draw_writes(
    rng: Random, lines: list[InputLine], table: dict[str, dict[str, Any]]
) -> list[PlannedWrite]:
    """Changes by someone else: never to a value any row asks for, so they cannot pass for
    the run's own work."""
    real_ids = sorted({line.conversation_id for line in lines if line.conversation_id in table})
    if not real_ids or rng.random() < 0.6:
        return []
    asked: dict[tuple[str, str], set[str | None]] = collections.defaultdict(set)
    for line in lines:
        _, target = parse_line(line.cells)
        for name, value in (target or {}).items():
            asked[(str(line.conversation_id), name)].add(value)
    writes = []
    for conversation_id in rng.sample(real_ids, min(len(real_ids), rng.randint(1, 4))):
        targeted = sorted(
            {name for (cid, name) in asked if cid == conversation_id}, key=FIELDS.index
        )
        name = rng.choice(targeted) if targeted and rng.random() < 0.8 else rng.choice(FIELDS)
        options: list[str | None] = {
            "inbox_id": list(INBOXES),
            "assignee_id": [*AGENTS, None],
            "status": list(STATUSES),
        }[name]
        excluded = {table[conversation_id][name], *asked[(conversation_id, name)]}
        allowed = [value for value in options if value not in excluded]
        if not allowed:
            name = "inbox_id"
            excluded = {table[conversation_id][name], *asked[(conversation_id, name)]}
            allowed = [value for value in INBOXES if value not in excluded]
        writes.append(
            PlannedWrite(
                round(rng.uniform(0.0, 1.0), 3), conversation_id, name, rng.choice(allowed)
            )
        )
    return sorted(writes, key=lambda write: write.after)


def _draw_kill(rng: Random) -> Kill:
    """A moment 0.05-2 s in; a quarter of them count from the start (start-up, journal made)."""
    return Kill(round(rng.uniform(0.05, 2.0), 3), from_first_request=rng.random() < 0.75)


def build_scenario(seed: int) -> Scenario:
    """Every choice of scenario `seed`, from `Random(seed)` only."""
    rng = Random(seed)
    table = table_rows()
    lines = []
    for row, cells in enumerate(_draw_lines(rng, table), start=1):
        conversation_id, target = parse_line(cells)
        lines.append(
            InputLine(
                row, cells, conversation_id, None if target is None else tuple(target.items())
            )
        )
    switches = _draw_switches(rng)
    flags = ["--max-attempts", str(rng.randint(3, 6))]
    if rng.random() < 0.5:
        flags += ["--batch-size", str(rng.choice((1, 5, 50)))]
    if rng.random() < 0.5:
        flags += ["--concurrency", str(rng.choice((1, 4)))]
    if rng.random() < 0.25:
        flags.append("--no-snapshot")
    writes = _draw_writes(rng, lines, {row["id"]: row for row in table})
    kill_main = _draw_kill(rng) if rng.random() < 0.35 else None
    kill_resume = _draw_kill(rng) if kill_main is not None and rng.random() < 0.3 else None
    return Scenario(
        seed=seed,
        lines=tuple(lines),
        switches=tuple(switches.items()),
        flags=tuple(flags),
        writes=tuple(writes),
        kill_main=kill_main,
        kill_first_resume=kill_resume,
        faults_off_for_resume=rng.random() < 0.5,
    )


def valid_rows(lines: Iterable[InputLine]) -> dict[int, InputLine]:
    """Rows the tool must send: valid by themselves, and their id has one target in the file."""
    candidates = [line for line in lines if line.target is not None and line.conversation_id]
    targets: dict[str, set[tuple[tuple[str, str | None], ...]]] = collections.defaultdict(set)
    for line in candidates:
        targets[str(line.conversation_id)].add(line.target or ())
    return {line.row: line for line in candidates if len(targets[str(line.conversation_id)]) == 1}


# --- Evidence: the sandbox's request log, tapped where it is written ----------------------------


def _changed_fields(commits: Iterable[Commit]) -> set[str]:
    """The fields (by name) that the commits changed."""
    return {
        name
        for commit in commits
        for name, old, new in zip(FIELDS, commit.before, commit.after, strict=True)
        if old != new
    }


@dataclass(frozen=True)
class Commit:
    """One row a committed PATCH updated, with its fields before and after."""

    conversation_id: str
    before: tuple[str | None, ...]
    after: tuple[str | None, ...]
    #: Order of the update among all the sandbox's updates (the table is changed under a lock).
    seq: int = 0

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class RequestRecord:
    """One request to /api: its request-log entry plus what the tap saw it do."""

    actor: str  # "cli" or "writer"
    phase: str  # "main" (run and resumes) or "undo"
    method: str
    query: str
    arrived: float
    ended: float = float("inf")
    entry: dict[str, Any] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    #: Ids of the rows a GET answered with (before any fault spoiled the answer).
    returned_ids: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.entry.get("status", 0))

    @property
    def fault(self) -> str | None:
        return self.entry.get("fault")

    @property
    def clean_answer(self) -> bool:
        return 200 <= self.status < 300 and self.fault is None

    @property
    def lost_answer(self) -> bool:
        """For a committed PATCH: the client was not told (an error status, an injected 503
        after the commit, a cut-off, a dropped body), so sending it again is fair."""
        return not self.clean_answer


_CURRENT_REQUEST: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "scenario_request", default=None
)


class RequestTap:
    """Hooks one in-process sandbox so that every request yields a RequestRecord.

    uvicorn serves each request in a task of its own, so a context variable set when the
    request arrives names it in the table update and in the log call it causes.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self.records: list[RequestRecord] = []
        self.phase = "main"
        self.in_flight = 0
        #: Set when the first request of the CLI's main run arrives.
        self.run_started = threading.Event()
        app, state = sandbox.app, sandbox.state
        for owner, name in (
            (app, "_api"),
            (app, "_get"),
            (state, "update"),
            (state, "log_request"),
        ):
            if not callable(getattr(owner, name, None)):
                raise RuntimeError(f"the sandbox has no {type(owner).__name__}.{name} to tap")
        original_api, original_get = app._api, app._get
        original_update, original_log = state.update, state.log_request
        update_order = itertools.count(1)

        async def tapped_api(scope: Any, receive: Any, send: Any) -> None:
            headers = dict(scope.get("headers") or [])
            record = RequestRecord(
                actor="writer" if headers.get(WRITER_HEADER) == WRITER_NAME else "cli",
                phase=self.phase,
                method=scope["method"],
                query=scope.get("query_string", b"").decode("latin-1"),
                arrived=time.monotonic(),
            )
            self.records.append(record)
            if record.actor == "cli" and record.phase == "main":
                self.run_started.set()
            self.in_flight += 1
            token = _CURRENT_REQUEST.set(record)
            try:
                await original_api(scope, receive, send)
            finally:
                _CURRENT_REQUEST.reset(token)
                record.ended = time.monotonic()
                self.in_flight -= 1

        def tapped_get(*args: Any, **kwargs: Any) -> Any:
            response = original_get(*args, **kwargs)
            record = _CURRENT_REQUEST.get()
            if record is not None and response.body:
                try:
                    body = json.loads(response.body)
                except ValueError:
                    body = []
                rows = body if isinstance(body, list) else [body]
                record.returned_ids += [str(row.get("id")) for row in rows if isinstance(row, dict)]
            return response

        def tapped_update(rows: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
            before = [(str(row["id"]), tuple(row.get(name) for name in FIELDS)) for row in rows]
            result = original_update(rows, *args, **kwargs)
            record = _CURRENT_REQUEST.get()
            if record is not None:
                seq = next(update_order)
                record.commits += [
                    Commit(row_id, values, tuple(row.get(name) for name in FIELDS), seq)
                    for (row_id, values), row in zip(before, rows, strict=True)
                ]
            return result

        def tapped_log(**entry: Any) -> None:
            original_log(**entry)
            record = _CURRENT_REQUEST.get()
            if record is not None:
                record.entry = entry

        app._api = tapped_api  # type: ignore[method-assign]
        app._get = tapped_get  # type: ignore[method-assign]
        state.update = tapped_update  # type: ignore[method-assign]
        state.log_request = tapped_log  # type: ignore[method-assign]

    def first_cli_request_since(self, moment: float) -> float | None:
        """When the first request of the CLI arriving after `moment` arrived, if one has."""
        return next(
            (r.arrived for r in list(self.records) if r.actor == "cli" and r.arrived >= moment),
            None,
        )

    def wait_idle(self, quiet: float = 0.3, limit: float = 20.0) -> None:
        """Until no request has been in flight for `quiet` seconds (a killed client's requests
        still run to their end, committing or not)."""
        deadline = time.monotonic() + limit
        calm_since: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self.in_flight:
                calm_since = None
            elif calm_since is None:
                calm_since = now
            elif now - calm_since >= quiet:
                return
            time.sleep(0.02)


@dataclass
class Invocation:
    """One run of the CLI: what it was, how it ended, what it printed."""

    label: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    killed_at: float | None = None
    #: The runner's clock when the process was started.
    started: float = 0.0
    #: Ids whose result the journal held when the process was killed (None: unreadable).
    journaled_at_kill: frozenset[str] | None = None

    def describe(self) -> str:
        ending = "killed" if self.killed_at is not None else f"exit {self.returncode}"
        return f"{self.label} {ending} in {self.seconds:.1f} s"


@dataclass
class Evidence:
    """Everything the checks compare, gathered from one scenario's run."""

    scenario: Scenario
    initial: dict[str, dict[str, Any]]
    after_main: dict[str, dict[str, Any]]
    after_undo: dict[str, dict[str, Any]]
    records: list[RequestRecord]
    invocations: list[Invocation]
    #: Exit code of the last main-run invocation (None: it never finished).
    final_exit: int | None
    report: list[dict[str, str]] | None
    undo_lines: list[dict[str, str]] | None
    #: Ids the second writer sent a PATCH for (whether or not it landed).
    touched: set[str]
    started: float


@dataclass(frozen=True)
class Violation:
    """One broken promise: its kind ("3 outcome/not_found-but-exists") and what, where."""

    kind: str
    text: str


@dataclass
class ScenarioResult:
    """One scenario's violations, how long it took, and what it was."""

    seed: int
    violations: list[Violation]
    seconds: float
    description: str
    kept: str | None = None

    def line(self) -> str:
        kinds = collections.Counter(violation.kind for violation in self.violations)
        counted = ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items()))
        return (
            f"seed {self.seed}: {len(self.violations)} violations [{counted}]: "
            f"{self.violations[0].kind}: {self.violations[0].text} | reproduce: "
            f".venv/bin/python -m tests.scenarios --count 1 --seed {self.seed} --verbose"
        )


# --- Running one scenario ----------------------------------------------------------------------


def _cli_environment(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MATEO_API_TOKEN", "MATEO_BASE_URL")}
    env["MATEO_API_TOKEN"] = TOKEN
    # A ledger and doctor answers of its own: scenarios never share a budget or a batch size.
    env["MATEO_BULK_STATE_DIR"] = str(state_dir)
    return env


def _invoke(
    label: str,
    args: list[str],
    env: dict[str, str],
    kill: Kill | None = None,
    tap: RequestTap | None = None,
) -> Invocation:
    """Run `python -m pipeline ARGS`, SIGKILLed at `kill` if it still runs then.

    Without a kill, the command runs in this process (tests.helpers.run_cli): the same `main`,
    without the second of CPU a new Python and its imports cost.
    """
    started = time.monotonic()
    if kill is None:
        result = run_cli(*args, cwd=REPO, env=env)
        seconds = time.monotonic() - started
        return Invocation(
            label, result.returncode, result.stdout, result.stderr, seconds, None, started
        )
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        killed_at = None if kill is None else _kill_when_due(process, kill, started, tap)
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        seconds = time.monotonic() - started
        return Invocation(label + " (hung)", None, stdout, stderr, seconds, started=started)
    seconds = time.monotonic() - started
    return Invocation(label, process.returncode, stdout, stderr, seconds, killed_at, started)


def _kill_when_due(
    process: subprocess.Popen[str], kill: Kill, started: float, tap: RequestTap | None
) -> float | None:
    """SIGKILL the process at the kill's moment; when it was killed, or None if it ended."""
    clock_start: float | None = started
    if kill.from_first_request and tap is not None:
        while (clock_start := tap.first_cli_request_since(started)) is None:
            if process.poll() is not None:
                return None
            time.sleep(0.002)
    try:
        process.wait(timeout=max(0.0, clock_start + kill.after - time.monotonic()))
        return None
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        return time.monotonic()


def _journaled_ids(run_dir: Path) -> frozenset[str] | None:
    """Ids with a final result in the journal (what a resumed run must not send again).

    An invalid row is journaled before anything is sent and never goes out: its id says nothing
    of another row of the same conversation, whose PATCH may still be in flight at a kill.
    """
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return frozenset()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            query = (
                "SELECT conversation_id FROM results WHERE outcome NOT IN ('skipped', 'invalid')"
            )
            return frozenset(_normalised(row[0]) for row in connection.execute(query))
    except sqlite3.Error:
        return None


def _journal_state(run_dir: Path) -> str | None:
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
            return json.loads(row[0]) if row else None
    except sqlite3.Error:
        return None


def _second_writer(
    sandbox: Sandbox,
    writes: Iterable[PlannedWrite],
    tap: RequestTap,
    main_done: threading.Event,
    touched: set[str],
) -> None:
    """Someone else at work on the same conversations, timed from the run's first request."""
    while not tap.run_started.wait(0.01) and not main_done.is_set():
        pass
    begin = tap.first_cli_request_since(0.0) or time.monotonic()
    headers = {"Authorization": f"Bearer {TOKEN}", WRITER_HEADER.decode(): WRITER_NAME.decode()}
    with httpx.Client(base_url=sandbox.base_url, headers=headers, timeout=5) as client:
        for write in writes:
            time.sleep(max(0.0, begin + write.after - time.monotonic()))
            touched.add(write.conversation_id)
            try:
                client.patch(
                    "/conversation",
                    params={"id": f"eq.{write.conversation_id}"},
                    json={write.field: write.value},
                )
            except httpx.HTTPError:
                pass  # a fault the sandbox drew for us: touched all the same, maybe


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _table(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in sandbox.rows()}


def gather_evidence(scenario: Scenario, workdir: Path) -> Evidence:
    """Run the scenario against a fresh sandbox and collect everything the checks compare."""
    input_path = workdir / "input.csv"
    with input_path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        writer.writerows(line.cells for line in scenario.lines)
    run_dir, undo_dir = workdir / "run", workdir / "undo-run"
    env = _cli_environment(workdir / "state")
    config = SandboxConfig(token=TOKEN).replace(**dict(scenario.switches))
    with running_sandbox(config, request_log=workdir / "requests.jsonl") as sandbox:
        tap = RequestTap(sandbox)
        initial = _table(sandbox)
        common = ["--base-url", sandbox.base_url, "--rate", "unlimited", "--timeout", "2"]
        touched: set[str] = set()
        main_done = threading.Event()
        writer = threading.Thread(
            target=_second_writer, args=(sandbox, scenario.writes, tap, main_done, touched)
        )
        writer.start()
        started = time.monotonic()
        run_args = ["run", str(input_path), *common, *scenario.flags, "--quiet"]
        run_args += ["--run-dir", str(run_dir)]
        invocations = [_invoke("run", run_args, env, scenario.kill_main, tap)]
        continuations = 0
        while invocations[-1].killed_at is not None or invocations[-1].returncode == 3:
            if invocations[-1].killed_at is not None:
                invocations[-1].journaled_at_kill = _journaled_ids(run_dir)
            if continuations == MAX_CONTINUATIONS:
                break
            if continuations == 0 and scenario.faults_off_for_resume:
                sandbox.configure(**FAULTS_OFF)
            kill = scenario.kill_first_resume if continuations == 0 else None
            if _journal_state(run_dir) is not None:
                args = ["resume", str(run_dir), "--quiet"]
                invocations.append(_invoke("resume", args, env, kill, tap))
            else:  # killed before the journal held the run: start it again, as a user would
                invocations.append(_invoke("run (again)", run_args, env, kill, tap))
            continuations += 1
        main_done.set()
        last = invocations[-1]
        final_exit = None if last.killed_at is not None or last.returncode == 3 else last.returncode
        writer.join()
        tap.wait_idle()
        after_main = _table(sandbox)
        report = _read_csv(run_dir / "report.csv")
        undo_lines = _read_csv(run_dir / "undo.csv")
        tap.phase = "undo"
        sandbox.configure(**FAULTS_OFF)
        after_undo = after_main
        if undo_lines is not None:
            undo_args = ["run", str(run_dir / "undo.csv"), *common, "--quiet"]
            invocations.append(_invoke("undo", [*undo_args, "--run-dir", str(undo_dir)], env))
            tap.wait_idle()
            after_undo = _table(sandbox)
    return Evidence(
        scenario=scenario,
        initial=initial,
        after_main=after_main,
        after_undo=after_undo,
        records=list(tap.records),
        invocations=invocations,
        final_exit=final_exit,
        report=report,
        undo_lines=undo_lines,
        touched=touched,
        started=started,
    )


# --- The checks --------------------------------------------------------------------------------


def id_filter_ids(query: str) -> tuple[list[str] | None, str]:
    """The ids a PATCH's query selects with its one `id` filter, or None and why not."""
    values = [value for key, value in parse_qsl(query, keep_blank_values=True) if key == "id"]
    if len(values) != 1:
        return None, f"{len(values)} id parameters"
    if found := ID_EQ.fullmatch(values[0]):
        return [found.group(1).lower()], ""
    if found := ID_IN.fullmatch(values[0]):
        return found.group(1).lower().split(","), ""
    return None, f"id filter {values[0]!r} is neither eq.<uuid> nor in.(<uuid>,...)"


def _values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(name) for name in FIELDS)


def _show(values: Iterable[Any]) -> str:
    return "/".join("null" if value is None else str(value)[:8] for value in values)


def _report_value(text: str) -> str | None:
    return None if text == "null" else text.lower()


def _normalised(text: str) -> str:
    return text.strip().lower()


class Checker:
    """The six checks over one scenario's evidence; each yields one-line violations."""

    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence
        scenario = evidence.scenario
        self.valid = valid_rows(scenario.lines)
        self.validly_named = {str(line.conversation_id) for line in self.valid.values()}
        self.input_ids = {_normalised(line.cells[0]) for line in scenario.lines}
        self.undo_ids = {_normalised(line["conversation_id"]) for line in evidence.undo_lines or []}
        #: Per kill: when the next session started (every request of the killed one arrived
        #: before that), and the ids the journal held as done at the kill.
        self.restarts = [
            (after.started, killed.journaled_at_kill)
            for killed, after in itertools.pairwise(evidence.invocations)
            if killed.killed_at is not None
        ]
        self.run_requests = [r for r in evidence.records if r.actor == "cli" and r.phase == "main"]
        #: Per id, this run's commits (matched and updated), in order of arrival.
        self.commits: dict[str, list[tuple[RequestRecord, Commit]]] = collections.defaultdict(list)
        for record in sorted(self.run_requests, key=lambda r: r.arrived):
            for commit in record.commits:
                self.commits[commit.conversation_id].append((record, commit))

    def at(self, moment: float) -> str:
        return f"+{moment - self.evidence.started:.2f}s"

    def all(self) -> list[Violation]:
        return [
            *self.patch_filters(),
            *self.unasked_changes(),
            *self.outcomes(),
            *self.repeated_patches(),
            *self.undo(),
            *self.invocations(),
            *self.tap_agrees_with_log(),
        ]

    def tap_agrees_with_log(self) -> Iterator[Violation]:
        """The runner's own check: the rows the tap saw updated are the ones the log names."""
        for record in self.evidence.records:
            logged = sorted(record.entry.get("ids_updated") or [])
            seen = sorted(commit.conversation_id for commit in record.commits)
            if logged and logged != seen:
                yield Violation(
                    "runner-error",
                    f"(not a product violation) the tap saw the {record.method} at "
                    f"{self.at(record.arrived)} update {len(seen)} rows; the log: {len(logged)}",
                )

    # 1 ------------------------------------------------------------------------------------
    def patch_filters(self) -> Iterator[Violation]:
        """Every PATCH of the CLI has one id filter, naming only ids of its input file."""
        for record in self.evidence.records:
            if record.actor != "cli" or record.method != "PATCH":
                continue
            ids, problem = id_filter_ids(record.query)
            if ids is None:
                yield Violation("1 patch-filter/shape", f"PATCH ?{record.query[:160]}: {problem}")
                continue
            main = record.phase == "main"
            strangers = sorted(set(ids) - (self.input_ids if main else self.undo_ids))
            if strangers:
                yield Violation(
                    "1 patch-filter/stranger-id",
                    f"PATCH at {self.at(record.arrived)} names {strangers[0]}, which is not in "
                    f"the {'input' if main else 'undo'} file ({len(strangers)} such ids)",
                )

    # 2 ------------------------------------------------------------------------------------
    def unasked_changes(self) -> Iterator[Violation]:
        """Conversations no valid row names keep every column (the writer's rows aside)."""
        evidence = self.evidence
        for table_before, table_after, named, phase in (
            (evidence.initial, evidence.after_main, self.validly_named, "the run"),
            (evidence.after_main, evidence.after_undo, self.undo_ids, "the undo run"),
        ):
            for conversation_id, before in table_before.items():
                if conversation_id in named or conversation_id in evidence.touched:
                    continue
                after = table_after[conversation_id]
                changed = [
                    f"{name} {before[name]} -> {after[name]}"
                    for name in sorted(before)
                    if name != "updated_at" and before[name] != after[name]
                ]
                if changed:
                    yield Violation(
                        "2 unasked-change",
                        f"conversation {conversation_id}, named by no valid row, was changed by "
                        f"{phase}: {', '.join(changed)}",
                    )

    # 3 ------------------------------------------------------------------------------------
    def outcomes(self) -> Iterator[Violation]:
        """Each report line agrees with the input, the commits and the table."""
        evidence = self.evidence
        if evidence.report is None:
            return  # check 6 says so
        lines = {line.row: line for line in evidence.scenario.lines}
        by_id: dict[str, set[str]] = collections.defaultdict(set)
        for report_line in evidence.report:
            by_id[_normalised(report_line["conversation_id"])].add(report_line["outcome"])
        identical: dict[tuple[Any, ...], list[dict[str, str]]] = collections.defaultdict(list)
        for report_line in evidence.report:
            row, outcome = int(report_line["row"]), report_line["outcome"]
            line = lines.get(row)
            if line is None:
                continue  # check 6 says so
            valid = row in self.valid
            if valid == (outcome == "invalid"):
                wanted = "valid" if valid else "invalid"
                yield Violation(
                    f"3 outcome/{wanted}-row-reported-{outcome}",
                    f"row {row} ({line.conversation_id or line.cells[0]}): {wanted} input "
                    f"reported {outcome}",
                )
            conversation_id = line.conversation_id
            if conversation_id is None:
                continue
            if valid:
                identical[(conversation_id, line.target)].append(report_line)
            commits = self.commits.get(conversation_id, [])
            changing = [(record, commit) for record, commit in commits if commit.changed]
            if outcome == "updated":
                yield from self._updated_holds(row, conversation_id, report_line, line, commits)
            elif outcome in NOT_CHANGED_OUTCOMES and changing:
                # The change belongs to another line of this id that admits it may have landed.
                accounted = bool(by_id[conversation_id] & {"updated", "failed", "skipped"})
                # An invalid row is never sent: a change of its id is another, valid row's (whose
                # own outcome is checked on its own line).
                accounted = accounted or (
                    outcome == "invalid" and conversation_id in self.validly_named
                )
                # A conflict on a row someone else changed after our PATCH landed (its answer
                # lost) is a race the run cannot see; the other outcomes never race so.
                raced = outcome == "conflict" and conversation_id in evidence.touched
                if not accounted and not raced:
                    record, commit = changing[0]
                    yield Violation(
                        f"3 outcome/{outcome}-but-changed-by-run",
                        f"row {row} ({conversation_id}): reported {outcome}, but a PATCH of the "
                        f"run at {self.at(record.arrived)} changed it "
                        f"{_show(commit.before)} -> {_show(commit.after)}",
                    )
            if outcome == "not_found" and conversation_id in evidence.initial:
                yield Violation(
                    "3 outcome/not_found-but-exists",
                    f"row {row} ({conversation_id}): reported not_found, but the table has it",
                )
        for (conversation_id, _), same in identical.items():
            outcomes = sorted({report_line["outcome"] for report_line in same})
            if len(outcomes) > 1:
                yield Violation(
                    "3 outcome/duplicates-disagree",
                    f"rows {', '.join(line['row'] for line in same)} ask the same of "
                    f"{conversation_id} but report {', '.join(outcomes)}",
                )

    def _updated_holds(
        self,
        row: int,
        conversation_id: str,
        report_line: dict[str, str],
        line: InputLine,
        commits: list[tuple[RequestRecord, Commit]],
    ) -> Iterator[Violation]:
        if not commits:
            yield Violation(
                "3 outcome/updated-without-commit",
                f"row {row} ({conversation_id}): reported updated, but no committed PATCH of "
                "this run named it",
            )
            return
        if conversation_id in self.evidence.touched or line.target is None:
            return  # someone else changed it too: its final values are not the run's to keep
        held = self.evidence.after_main[conversation_id]
        for name, target in line.target:
            # A line that admits a difference promises the returned value, not the target.
            expected = (
                _report_value(report_line[f"returned_{name}"])
                if report_line.get("difference")
                else target
            )
            if held[name] != expected:
                yield Violation(
                    "3 outcome/updated-target-not-held",
                    f"row {row} ({conversation_id}): reported updated, but after the run its "
                    f"{name} is {held[name]}, not {expected}",
                )

    # 4 ------------------------------------------------------------------------------------
    def repeated_patches(self) -> Iterator[Violation]:
        """No id is committed twice, unless the first commit's answer was lost, or a kill came
        between the two while the row's result was not yet in the journal (in flight)."""
        for conversation_id, commits in self.commits.items():
            for (first, _), (second, _) in zip(commits, commits[1:], strict=False):
                if first.lost_answer:
                    continue
                if any(
                    first.arrived < restarted <= second.arrived
                    # An unreadable journal cannot tell: the kill gets the benefit of the doubt.
                    and (journaled is None or conversation_id not in journaled)
                    for restarted, journaled in self.restarts
                ):
                    continue
                yield Violation(
                    "4 repeat-patch",
                    f"conversation {conversation_id}: committed by a PATCH answered "
                    f"{first.status} at {self.at(first.ended)} and again by one at "
                    f"{self.at(second.arrived)}, with no lost answer or kill between",
                )
                break

    # 5 ------------------------------------------------------------------------------------
    def before_known(self, conversation_id: str) -> bool:
        """Whether the run read the row (a clean GET answer naming it) before its first PATCH
        of the row was committed.

        The undo promise is conditional: without the values before, there is nothing to put
        back (--no-snapshot, or an API that refuses the snapshot's reads and the run goes on
        without them). With them, nothing is an excuse.
        """
        commits = self.commits.get(conversation_id, [])
        if not commits:
            return False
        first_commit = commits[0][0].arrived
        return any(
            record.method == "GET"
            and record.clean_answer
            and conversation_id in record.returned_ids
            and record.ended <= first_commit
            for record in self.run_requests
        )

    def undo(self) -> Iterator[Violation]:
        """The undo file puts back every row the run changed and knew the values of."""
        evidence = self.evidence
        changed = sorted(
            conversation_id
            for conversation_id, commits in self.commits.items()
            if any(commit.changed for _, commit in commits)
            and conversation_id in self.validly_named  # the others are check 2's
            and conversation_id not in evidence.touched  # a later change wins over the undo
            and self.before_known(conversation_id)
        )
        if changed and evidence.undo_lines is None:
            yield Violation(
                "5 undo/no-undo-file",
                f"{len(changed)} conversations the run changed (values before read) but no "
                f"undo file, e.g. {changed[0]}",
            )
            return
        # A row whose PATCH was never confirmed (maybe_applied) has no answer saying what else a
        # proxy set in it: its undo promise covers the fields it asked to change.
        asked_only = {
            _normalised(line["conversation_id"]): [
                index for index, name in enumerate(FIELDS) if line.get(f"target_{name}")
            ]
            for line in evidence.report or []
            if line.get("error_code") == "maybe_applied"
        }
        for conversation_id in changed:
            original = _values(evidence.initial[conversation_id])
            now = _values(evidence.after_undo[conversation_id])
            fields = asked_only.get(conversation_id)
            if fields is not None:
                original = tuple(original[index] for index in fields)
                now = tuple(now[index] for index in fields)
            if now != original:
                yield Violation(
                    "5 undo/not-restored",
                    f"conversation {conversation_id}: after the undo {_show(now)}, "
                    f"originally {_show(original)}",
                )
        yield from self._undo_keeps_later_changes()
        for report_line in evidence.report or []:
            conversation_id = _normalised(report_line["conversation_id"])
            if (
                report_line["outcome"] == "updated"
                and conversation_id not in evidence.touched
                and conversation_id not in self.undo_ids
                and self.before_known(conversation_id)
            ):
                yield Violation(
                    "5 undo/updated-not-in-undo",
                    f"row {report_line['row']} ({conversation_id}): updated, values before "
                    "read, but not in undo.csv",
                )

    def _undo_keeps_later_changes(self) -> Iterator[Violation]:
        """A field someone else changed after the run's last change keeps that change: the
        undo restores only the fields the run changed, each guarded by the value the run left,
        so it must end `conflict` on such a field, never overwrite it. (Another field of the
        same row, which the run changed and no one touched since, is restored: the undo's
        promise is per field, as its expect_* columns are.)"""
        records = self.evidence.records
        writer_commits = [
            commit
            for record in records
            if record.actor == "writer"
            for commit in record.commits
            if commit.changed
        ]
        for record in records:
            if record.actor != "cli" or record.phase != "undo":
                continue
            for commit in record.commits:
                if not commit.changed:
                    continue
                conversation_id = commit.conversation_id
                run_changes = [c.seq for _, c in self.commits.get(conversation_id, []) if c.changed]
                if not run_changes:
                    continue
                later = _changed_fields(
                    c
                    for c in writer_commits
                    if c.conversation_id == conversation_id and c.seq > max(run_changes)
                )
                overwritten = later & _changed_fields([commit])
                if overwritten:
                    yield Violation(
                        "5 undo/overwrote-a-later-change",
                        f"conversation {conversation_id}: someone else changed "
                        f"{', '.join(sorted(overwritten))} after the run, and the undo at "
                        f"{self.at(record.arrived)} changed it again",
                    )

    # 6 ------------------------------------------------------------------------------------
    def invocations(self) -> Iterator[Violation]:
        """No traceback, expected exit codes, and a finished run has a complete report."""
        evidence = self.evidence
        for invocation in evidence.invocations:
            last = (invocation.stderr.strip().splitlines() or [""])[-1][:160]
            if "Traceback (most recent call last)" in invocation.stderr:
                yield Violation(
                    "6 cli/traceback", f"`{invocation.label}` printed a traceback: {last}"
                )
            if invocation.killed_at is None and invocation.returncode not in (0, 1, 3, 4):
                yield Violation(
                    "6 cli/exit-code",
                    f"`{invocation.label}` exited {invocation.returncode}: {last}",
                )
        if evidence.final_exit is None:
            yield Violation(
                "6 cli/unfinished", f"the run did not finish after {MAX_CONTINUATIONS} resumes"
            )
            return
        if evidence.final_exit not in (0, 1, 4):
            return  # its exit code is the violation
        report = evidence.report
        if report is None:
            yield Violation(
                "6 cli/no-report", f"the run finished (exit {evidence.final_exit}) without a report"
            )
            return
        rows = [int(line["row"]) for line in report]
        count = len(evidence.scenario.lines)
        if sorted(rows) != list(range(1, count + 1)):
            yield Violation(
                "6 cli/report-rows",
                f"the report has rows {_ranges(rows)}, not 1..{count} once each",
            )
        if evidence.final_exit == 4:
            return  # a safety stop: rows not attempted are skipped, and exit 4 says so
        for line in report:
            if line["outcome"] not in FINISHED_OUTCOMES:
                yield Violation(
                    "6 cli/outcome-of-unfinished-run",
                    f"row {line['row']} ({line['conversation_id']}): {line['outcome']} in a run "
                    f"that finished (exit {evidence.final_exit})",
                )
                break
        all_done = all(
            line["outcome"] in ("updated", "unchanged") and not line.get("difference")
            for line in report
        )
        if all_done != (evidence.final_exit == 0):
            yield Violation(
                "6 cli/exit-disagrees-with-report",
                f"exit {evidence.final_exit}, but {'every' if all_done else 'not every'} row is "
                "updated or unchanged in the report",
            )


def _ranges(rows: list[int]) -> str:
    counted = collections.Counter(rows)
    repeated = sorted(row for row, count in counted.items() if count > 1)
    span = f"{min(rows, default=0)}..{max(rows, default=0)}"
    return f"{span} ({len(rows)} lines, repeated {repeated[:5]})"


def _traffic(evidence: Evidence) -> str:
    """What the run's requests met, to judge what a scenario exercised."""
    run = [r for r in evidence.records if r.actor == "cli" and r.phase == "main"]
    patches = [r for r in run if r.method == "PATCH"]
    committed = [r for r in patches if r.commits]
    faults = collections.Counter(r.fault for r in run if r.fault)
    changed = {c.conversation_id for r in committed for c in r.commits if c.changed}
    lost = sum(1 for r in committed if r.lost_answer)
    writes = sum(1 for r in evidence.records if r.actor == "writer")
    return (
        f"{len(run)} requests of the run ({len(patches)} PATCH, {len(committed)} committed, "
        f"{lost} of them with a lost answer), {len(changed)} rows changed, "
        f"faults {dict(faults) or 'none'}, {writes} writes by someone else"
    )


def run_scenario(seed: int, *, keep: str = "") -> ScenarioResult:
    """Build, run and check scenario `seed`; its temporary directory is removed unless `keep`
    is "all", or "failing" and the scenario found a violation."""
    started = time.monotonic()
    scenario = build_scenario(seed)
    description = scenario.describe()
    workdir = Path(tempfile.mkdtemp(prefix=f"mateo-scenario-{seed}-"))
    violations: list[Violation] = []
    try:
        evidence = gather_evidence(scenario, workdir)
        description += "\n  ran: " + "; ".join(i.describe() for i in evidence.invocations)
        description += "\n  saw: " + _traffic(evidence)
        for number, invocation in enumerate(evidence.invocations, start=1):
            (workdir / f"cli-{number}.out").write_text(invocation.stdout + invocation.stderr)
        violations = Checker(evidence).all()
    except Exception:  # a bug of the runner, never hidden: it counts, under its own name
        error = traceback.format_exc().strip().splitlines()
        violations = [Violation("runner-error", f"(not a product violation) {error[-1]}")]
        (workdir / "runner-error.txt").write_text("\n".join(error))
    finally:
        kept = keep == "all" or (keep == "failing" and bool(violations))
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
    return ScenarioResult(
        seed, violations, time.monotonic() - started, description, str(workdir) if kept else None
    )


def run_scenarios(
    seeds: Iterable[int], *, jobs: int = 1, keep: str = ""
) -> Iterator[ScenarioResult]:
    """Results in seed order; `jobs` scenarios at once, each in a process of its own."""
    seeds = list(seeds)
    if jobs <= 1:
        yield from (run_scenario(seed, keep=keep) for seed in seeds)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        yield from pool.map(_run_in_worker, seeds, [keep] * len(seeds))


def _run_in_worker(seed: int, keep: str) -> ScenarioResult:
    return run_scenario(seed, keep=keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.scenarios", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--count", type=int, default=30, help="scenarios to run (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first scenario")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios at once (default 1)")
    parser.add_argument(
        "--verbose", action="store_true", help="each scenario and every violation in full"
    )
    parser.add_argument(
        "--keep",
        nargs="?",
        const="all",
        default="",
        choices=("all", "failing"),
        help="keep each scenario's directory (input, run dirs, request log, CLI output), or "
        "with --keep failing only those of violating scenarios",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    by_kind: dict[str, list[int]] = collections.defaultdict(list)
    total = 0
    for result in run_scenarios(
        range(args.seed, args.seed + args.count), jobs=args.jobs, keep=args.keep
    ):
        total += len(result.violations)
        for violation in result.violations:
            by_kind[violation.kind].append(result.seed)
        if args.verbose:
            print(f"seed {result.seed} ({result.seconds:.1f} s): {result.description}")
            for violation in result.violations:
                print(f"  {violation.kind}: {violation.text}")
        if result.kept:
            print(f"  kept: {result.kept}")
        if result.violations:
            print(result.line(), flush=True)
    for kind, seeds in sorted(by_kind.items()):
        distinct = sorted(set(seeds))
        print(f"  {kind}: {len(seeds)} in {len(distinct)} scenarios (e.g. seed {distinct[0]})")
    print(f"  ({time.monotonic() - started:.0f} s)")
    print(f"{args.count} scenarios, {total} violations")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
