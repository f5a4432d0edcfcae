"""The tasks of one session, in the order a row meets them: read the spooled rows, snapshot,
group, send, and commit each result to the journal (a dry run only records its rows)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import anyio
import httpx
from anyio import CancelScope
from anyio.abc import ObjectSendStream, TaskGroup

from pipeline.api.client import MateoClient
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.core.errors import MateoBulkError, RunStopped
from pipeline.core.models import Guard, Outcome, RowRequest, RowResult
from pipeline.orchestrator.session import Session
from pipeline.orchestrator.signals import watch_signals
from pipeline.stages import session_files
from pipeline.stages.commits import commit_batches
from pipeline.stages.grouping import Grouper
from pipeline.stages.outcomes import skipped
from pipeline.stages.prepare import dry_run_columns, sort_batch
from pipeline.stages.report import InputCells, ReportWriter
from pipeline.stages.report_columns import unsent_batch
from pipeline.stages.send import Sender, row_results
from pipeline.stages.snapshot import guard_expected, snapshot_rows


async def run_session(session: Session, transport: httpx.AsyncBaseTransport | None) -> None:
    settings = session.settings
    try:
        if settings.dry_run:
            # Sends nothing, so no client: its transport and TLS context cost a quarter second.
            async with anyio.create_task_group() as tasks:
                await _run_dry(tasks, session)
            return
        client = MateoClient(
            settings.base_url,
            settings.token,
            timeout=settings.timeout,
            max_connections=settings.concurrency,
            transport=transport,
            transport_kind=settings.transport,
        )
        async with client, anyio.create_task_group() as tasks:
            await _run_tasks(tasks, session, client)
    except BaseExceptionGroup as group:
        # A stage's own error (say, the input changed between the two passes) surfaces as is.
        errors = [error for error in group.exceptions if isinstance(error, MateoBulkError)]
        if errors:
            raise errors[0] from None
        raise


async def _run_dry(tasks: TaskGroup, session: Session) -> None:
    signals = _watch_signals_if_asked(tasks, session)
    await _dry_run(session)
    signals.cancel()


def _watch_signals_if_asked(tasks: TaskGroup, session: Session) -> CancelScope:
    """The scope of the signal watcher, started only when the session handles signals."""
    signals = anyio.CancelScope()
    if session.handle_signals:
        tasks.start_soon(watch_signals, session.control, signals, tasks.cancel_scope)
    return signals


async def _run_tasks(tasks: TaskGroup, session: Session, client: MateoClient) -> None:
    settings, control, journal = session.settings, session.control, session.journal
    send_rows, receive_rows = anyio.create_memory_object_stream[list[RowRequest]](2)
    send_results, receive_results = anyio.create_memory_object_stream[list[RowResult]](16)
    signals = _watch_signals_if_asked(tasks, session)
    timeline = anyio.CancelScope()
    tasks.start_soon(_record_timeline, session, timeline)
    tasks.start_soon(_produce, session, send_rows, send_results.clone())
    path = RequestPath(
        client,
        control,
        rate=settings.rate,
        max_attempts=settings.max_attempts,
        ledger=None if settings.dry_run else session.ledger,
        max_wait=settings.max_wait,
        wait_for_reset=settings.wait,
    )
    pacer = path.pacer
    if settings.dry_run:
        receive_rows.close()
    else:
        to_group = receive_rows
        if settings.snapshot:
            send_checked, to_group = anyio.create_memory_object_stream[list[RowRequest]](2)
        # At a low rate a request slot is worth waiting for: a row may wait as long as a full
        # group takes to be sent (25 s at 2 requests/s), so that slow input still groups.
        fill_wait = settings.max_group_wait
        if settings.rate:
            fill_wait = max(fill_wait, settings.batch_size / settings.rate)
        grouper = Grouper(to_group, batch_size=settings.batch_size, fill_wait=fill_wait)
        sender = Sender(
            path, grouper, guard=Guard.of(settings.query_guard), write_ahead=journal.record_intents
        )
        if settings.snapshot:
            tasks.start_soon(
                partial(
                    snapshot_rows,
                    path,
                    control,
                    receive_rows,
                    send_checked,
                    send_results.clone(),
                    concurrency=settings.concurrency,
                    guarded=settings.guarded,
                    plan_only=settings.plan_only,
                    api_sets=journal.fields_the_api_set(),
                )
            )
        tasks.start_soon(
            _send_all, sender, grouper, control, settings.concurrency, send_results.clone()
        )
    send_results.close()
    counts = journal.counts()
    done = sum(counts[outcome] for outcome in Outcome if outcome is not Outcome.SKIPPED)
    counts[Outcome.SKIPPED] = 0  # skipped rows of an earlier session are to be sent now
    # Shown before the first request: what the input's check has to say comes before sending.
    session.show_progress(done, counts, pacer.rate)
    duplicates = session.validation.duplicates
    async with receive_results:
        async for batch in commit_batches(receive_results):
            results = duplicates.with_followers(batch)
            # Durable first: a row counts as done only once its result is committed.
            journal.record(results)
            for result in results:
                counts[result.outcome] += 1
            done += len(results)
            session.recorded += len(results)
            session.show_progress(done, counts, pacer.rate)
    signals.cancel()
    timeline.cancel()


#: How often the run's timeline gets a point (when anything changed): fine enough to show
#: requests per interval and when 429s came, one small insert a second at most.
_TIMELINE_INTERVAL = 1.0


async def _record_timeline(session: Session, scope: CancelScope) -> None:
    with scope:
        while True:
            await anyio.sleep(_TIMELINE_INTERVAL)
            session.record_event("progress")
            session.show_wait()


async def _produce(
    session: Session,
    send_rows: ObjectSendStream[list[RowRequest]],
    send_results: ObjectSendStream[list[RowResult]],
) -> None:
    settings = session.settings
    assert session.validation.spool is not None
    # The rows as validated, spooled by the first pass: read, not parsed and checked again.
    chunks = session.validation.spool.batches()
    version = session.input_file.version()

    def next_chunk() -> tuple[list[RowResult], list[RowRequest]] | None:
        chunk = next(chunks, None)
        if chunk is None:
            return None
        if _stopped_for_a_changed_input(session, version):
            return None
        rows = chunk.column("row")
        first, last = rows[0].as_py(), rows[-1].as_py()
        done = session.journal.done_rows(first, last, retry_failed=session.retry_failed)
        invalid, to_send = sort_batch(chunk, session.validation.duplicates, done)
        intents = session.journal.open_intents(first, last)
        if intents:
            # Sent by an earlier session that never learned the answer: they may have been
            # applied, and their before-values are the ones read before that first attempt.
            to_send = [
                dataclasses.replace(row, maybe_applied=True, before=intents[row.row] or row.before)
                if row.row in intents
                else row
                for row in to_send
            ]
        return invalid, to_send

    async with send_rows, send_results:
        while (sorted_chunk := await anyio.to_thread.run_sync(next_chunk)) is not None:
            invalid, to_send = sorted_chunk
            if invalid:
                await send_results.send(invalid)
            if settings.dry_run:
                await send_results.send(row_results(to_send, Outcome.PLANNED))
            elif to_send:
                if not settings.snapshot:
                    to_send = [guard_expected(row, settings.guarded) for row in to_send]
                await send_rows.send(to_send)


def _stopped_for_a_changed_input(session: Session, version: tuple[int, int, int]) -> bool:
    """Stop the run if its input was rewritten since it was validated: its rows would no
    longer be the ones validated (and journaled by number)."""
    if session.input_file.version() == version:
        return False
    session.control.stop(
        RunStopped(
            f"{session.settings.input} was changed during the run; its rows are no longer the "
            "ones validated. Restore the file and resume, or start a new run"
        )
    )
    return True


async def _dry_run(session: Session) -> None:
    """A dry run sends nothing, so each row is `planned` or `invalid` as the first pass found:
    the spooled batches go to the journal in columns, a transaction per batch (no record
    object per row) on a thread of their own, and to the report as they go (not read back
    from the journal after), with the same progress as a real run."""
    settings, journal, validation = session.settings, session.journal, session.validation
    assert validation.spool is not None
    batches = validation.spool.batches()
    version = session.input_file.version()
    counts = dict.fromkeys(Outcome, 0)
    assert settings.run_dir is not None
    report_path = session_files.report_path(settings.run_dir, settings.report)
    writer = journal.columns_writer()

    def record_next(report: ReportWriter) -> dict[str, int] | None:
        checked = next(batches, None)
        if checked is None:
            return None
        # The spool holds the rows as validated, but a report of them would describe a file
        # that is no longer there: the user is told, as a real run tells them.
        if _stopped_for_a_changed_input(session, version):
            return None
        columns = dry_run_columns(checked, validation.duplicates)
        writer.record(columns)
        report.write(unsent_batch(columns))
        tally = columns["outcome"].value_counts().to_pylist()
        return {entry["values"]: entry["counts"] for entry in tally}

    try:
        with ReportWriter(report_path, InputCells.carried(session.input_file)) as report:
            await _record_dry_run(session, partial(record_next, report), counts)
            # The report is complete once the journal holds every row it shows.
            await anyio.to_thread.run_sync(writer.close)
    finally:
        writer.close()
    session.report_written = report_path


async def _record_dry_run(
    session: Session, record_next: Callable[[], dict[str, int] | None], counts: dict[Outcome, int]
) -> None:
    done = 0
    while (recorded := await anyio.to_thread.run_sync(record_next)) is not None:
        for outcome, count in recorded.items():
            counts[Outcome(outcome)] += count
            done += count
            session.recorded += count
        session.show_progress(done, counts, session.settings.rate)


async def _send_all(
    sender: Sender,
    grouper: Grouper,
    control: RunControl,
    concurrency: int,
    send_results: ObjectSendStream[list[RowResult]],
) -> None:
    async def work() -> None:
        while not control.stopping:
            group = await grouper.next_group()
            if group is None:
                return
            if control.stopping:
                await send_results.send(skipped(group.rows))
                return
            await send_results.send(await sender.send(group))

    async with send_results:
        async with anyio.create_task_group() as workers:
            for _ in range(concurrency):
                workers.start_soon(work)
        # The run stopped early: every row not handed out yet is reported as skipped.
        await grouper.drain(lambda rows: send_results.send(skipped(rows)))
