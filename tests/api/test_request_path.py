"""The one request path: the wire-level PATCH check, reads that page, stops that end waits."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest

from pipeline.api.client import MateoClient, _parse_seconds
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.api.wire import check_base_url, check_patch_target
from pipeline.core.errors import InputError, RunStopped, SafetyError, TransientError
from pipeline.core.models import ConversationIds, FieldValues, Guard
from pipeline.sandbox import Sandbox

A = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
B = "3c90c3cc-0d44-4b50-8888-8dd25736052b"
IDS = ConversationIds([A, B])


def patch_request(url: str) -> httpx.Request:
    return httpx.Request("PATCH", url, content=b"{}")


@pytest.mark.parametrize(
    "url",
    [
        # What a base URL ending in "#" made of the request: the query became a fragment.
        f"http://127.0.0.1/api/v1/conversation#/conversation?id=in.({A},{B})",
        "http://127.0.0.1/api/v1/conversation?select=id",
        f"http://127.0.0.1/api/v1/conversation?id=in.({A},{B})&id=not.is.null",
        f"http://127.0.0.1/api/v1/conversation?id=in.({A})",
        f"http://127.0.0.1/api/v1/conversation?id=not.in.({A},{B})",
        f"http://127.0.0.1/api/v1/other?id=in.({A},{B})",
    ],
)
def test_a_patch_is_checked_as_it_goes_on_the_wire(url: str) -> None:
    """A PATCH without exactly one id filter equal to its group's ids is never sent."""
    with pytest.raises(SafetyError):
        check_patch_target(patch_request(url), IDS)


def test_a_patch_with_its_own_ids_and_guards_passes() -> None:
    """The id filter of the group plus guards and select is a PATCH that may leave."""
    url = f"http://127.0.0.1/api/v1/conversation?id=in.({A},{B})&status=eq.open&select=id"
    check_patch_target(patch_request(url), IDS)
    with pytest.raises(SafetyError):
        check_patch_target(patch_request(url), None)


def test_the_client_sends_nothing_when_the_check_fails() -> None:
    """A transport never sees a PATCH that fails the wire check."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    async def main() -> None:
        async with MateoClient(
            "https://api.example.test/api/v1", "token", transport=httpx.MockTransport(handler)
        ) as client:
            # Bypass the constructor's URL check, as a future bug might.
            client._endpoint = "https://api.example.test/api/v1/conversation#"
            await client.patch(IDS, FieldValues.of({"status": "closed"}))

    with pytest.raises(SafetyError):
        anyio.run(main)
    assert seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/api/v1#",
        "http://127.0.0.1:8000/api/v1/conversation#",
        "http://127.0.0.1:8000/api/v1?x=1",
        "http://user:secret@127.0.0.1:8000/api/v1",
        "ftp://127.0.0.1:8000/api/v1",
        "http://127.0.0.1:8000/api/v1/conversation",
        "https://integration.getmateo.com/api/v1/Conversation/",
    ],
)
def test_base_urls_that_would_change_the_request_are_refused(url: str) -> None:
    """A fragment, a query, user info, another scheme or a /conversation path: InputError."""
    with pytest.raises(InputError) as raised:
        check_base_url(url)
    assert "secret" not in str(raised.value)


def test_guards_on_one_column_are_all_kept() -> None:
    """A run-wide guard never replaces a row's own guard on the same column: both are sent."""
    combined = Guard.of({"status": "eq.open"}) + Guard.of({"status": "neq.archived"})
    assert combined.filters == (("status", "eq.open"), ("status", "neq.archived"))


@pytest.mark.parametrize("zone", ["GMT", "-0000", "+0000"])
def test_an_http_date_retry_after_is_utc(zone: str) -> None:
    """Retry-After as an HTTP date is read in UTC, whatever the machine's time zone."""
    moment = time.gmtime(time.time() + 30)
    text = time.strftime("%a, %d %b %Y %H:%M:%S ", moment) + zone
    seconds = _parse_seconds(text)
    assert seconds is not None and 25 <= seconds <= 31


def test_a_deeply_nested_answer_is_a_failed_attempt_not_a_crash() -> None:
    """JSON nested past the parser's stack is a transient error (RecursionError caught)."""
    body = b"[" * 100_000 + b"]" * 100_000

    async def main() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        async with MateoClient(
            "https://api.example.test/api/v1", "token", transport=transport
        ) as client:
            await client.patch(IDS, FieldValues.of({"status": "closed"}))

    with pytest.raises(TransientError) as raised:
        anyio.run(main)
    assert raised.value.may_have_applied


def test_a_token_echoed_at_the_cut_is_redacted_before_it_is_shortened() -> None:
    """An error message is redacted, then cut: no prefix of the token reaches the message."""
    token = "tok-" + "x" * 40
    message = "a" * 480 + token + " and more"

    async def main() -> None:
        transport = httpx.MockTransport(
            lambda request: httpx.Response(400, json={"code": "X", "message": message})
        )
        async with MateoClient(
            "https://api.example.test/api/v1", token, transport=transport
        ) as client:
            await client.patch(IDS, FieldValues.of({"status": "closed"}))

    with pytest.raises(Exception) as raised:
        anyio.run(main)
    assert "tok-xxxx" not in str(raised.value)


def sandbox_ids(sandbox: Sandbox, count: int) -> list[str]:
    return [row["id"] for row in sandbox.rows()[:count]]


def read_all(sandbox: Sandbox, ids: list[str]) -> tuple[dict[str, object], RunControl]:
    async def main() -> tuple[dict[str, object], RunControl]:
        control = RunControl()
        async with MateoClient(sandbox.base_url, sandbox.token) as client:
            path = RequestPath(client, control, rate=None, max_attempts=3)
            return await path.read_rows(ConversationIds(ids)), control

    return anyio.run(main)


@pytest.mark.parametrize("switches", [{}, {"drop_prefer": True}, {"drop_content_range": True}])
def test_reads_page_past_a_short_page(sandbox: Sandbox, switches: dict[str, bool]) -> None:
    """With 20 rows per GET, a read of 50 existing ids returns all 50, total or no total."""
    sandbox.configure(max_rows=20, **switches)
    ids = sandbox_ids(sandbox, 50)
    missing = "00000000-0000-4000-8000-000000000000"
    rows, _ = read_all(sandbox, [*ids, missing])
    assert set(rows) == set(ids)


def test_reads_go_one_id_at_a_time_when_in_lists_are_refused(sandbox: Sandbox) -> None:
    """A proxy forcing single objects (406 on several rows) is read one id per request."""
    sandbox.configure(force_single_object=True)
    ids = sandbox_ids(sandbox, 5)
    missing = "00000000-0000-4000-8000-000000000000"
    rows, control = read_all(sandbox, [*ids, missing])
    assert set(rows) == set(ids)
    assert any("one" in notice or "1 per request" in notice for notice in control.notices)


def test_query_pages_past_short_pages(sandbox: Sandbox) -> None:
    """A query under 7 rows per GET reads every matching row, in id order, once."""
    sandbox.configure(max_rows=7)
    expected = sorted(row["id"] for row in sandbox.rows() if row["status"] == "closed")

    async def main() -> list[str]:
        async with MateoClient(sandbox.base_url, sandbox.token) as client:
            path = RequestPath(client, RunControl(), rate=None, max_attempts=3)
            return [
                row["id"]
                async for page in path.query_pages({"status": "eq.closed"})
                for row in page
            ]

    assert anyio.run(main) == expected


def test_a_stop_ends_a_long_wait_at_once() -> None:
    """The first stop interrupts a pacer hold, a backoff or a --wait sleep immediately."""

    async def main() -> float:
        control = RunControl()
        started = anyio.current_time()
        async with anyio.create_task_group() as tasks:

            async def stop_soon() -> None:
                await anyio.sleep(0.1)
                control.stop(RunStopped("stopped by SIGINT"))

            tasks.start_soon(stop_soon)
            with pytest.raises(RunStopped):
                await control.sleep(3600)
        return anyio.current_time() - started

    assert anyio.run(main) < 5


def test_the_request_path_honours_ratelimit_remaining(sandbox: Sandbox) -> None:
    """ratelimit-remaining: 0 with a long reset stops cleanly before a 429 is met."""
    sandbox.configure(daily_quota=1, ratelimit_window="day")

    async def main() -> RunControl:
        control = RunControl()
        async with MateoClient(sandbox.base_url, sandbox.token) as client:
            path = RequestPath(client, control, rate=None, max_attempts=3)
            await path.read_rows(ConversationIds(sandbox_ids(sandbox, 1)))
            with pytest.raises(RunStopped):
                await path.read_rows(ConversationIds(sandbox_ids(sandbox, 1)))
        return control

    control = anyio.run(main)
    assert control.stopping and "limit is spent" in str(control.stop_reason)
    assert sandbox.stats()["rate_limited"] == 0
    assert json.dumps(control.notices)  # notices stay JSON-ready


@pytest.mark.parametrize("body", [b"", b"null"])
def test_a_read_answered_without_rows_is_not_none_found(body: bytes) -> None:
    """A GET answered with an empty body or null is a failed read, never "no such rows"."""

    async def main() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        async with MateoClient(
            "https://api.example.test/api/v1", "token", transport=transport
        ) as client:
            await client.read(IDS)

    with pytest.raises(TransientError):
        anyio.run(main)
