"""The client against answers a real server cannot be made to give on demand (MockTransport)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest

from pipeline.api.client import Answer, MateoClient
from pipeline.api.retry import MAX_BACKOFF_SECONDS, backoff_seconds
from pipeline.api.wire import MAX_RESPONSE_BYTES, check_base_url, make_transport
from pipeline.core.errors import (
    AuthError,
    ConnectionSetupError,
    EndpointError,
    InputError,
    PermanentError,
    TransientError,
)
from pipeline.core.models import ConversationIds, FieldValues

TOKEN = "secret-token-abcdefghijklmnop"
IDS = ConversationIds(
    ["3c90c3cc-0d44-4b50-8888-8dd25736052a", "3c90c3cc-0d44-4b50-8888-8dd25736052b"]
)
CHANGE = FieldValues.of({"status": "closed"})

Handler = Callable[[httpx.Request], httpx.Response]


def patch_with(handler: Handler, timeout: float = 5.0) -> Answer:
    async def main() -> Answer:
        transport = httpx.MockTransport(handler)
        async with MateoClient(
            "https://api.example.test/api/v1", TOKEN, timeout=timeout, transport=transport
        ) as client:
            return await client.patch(IDS, CHANGE)

    return anyio.run(main)


def test_request_has_id_filter_select_prefer_and_only_the_change() -> None:
    """The PATCH carries id=in.(…), select, return=representation and a body of the change."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    patch_with(handler)
    (request,) = seen
    assert request.method == "PATCH"
    assert request.url.params["id"] == "in.(" + ",".join(IDS.ids) + ")"
    assert request.url.params["select"] == "id,inbox_id,assignee_id,status"
    assert request.headers["prefer"] == "return=representation"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {"status": "closed"}


@pytest.mark.parametrize(
    ("response", "rows"),
    [
        (httpx.Response(200, json=[{"id": IDS.ids[0], "status": "closed"}]), 1),
        (httpx.Response(200, json=[]), 0),
        (httpx.Response(404, json={"code": "PGRST116", "message": "no rows"}), 0),
        (httpx.Response(404), 0),
    ],
    ids=["array", "empty-array", "404-json", "404-empty"],
)
def test_every_documented_success_shape_is_read(response: httpx.Response, rows: int) -> None:
    """Array, single object, [] and 404-for-no-match all become a list of rows."""
    answer = patch_with(lambda request: response)
    assert answer.rows is not None and len(answer.rows) == rows


@pytest.mark.parametrize("body", [{"id": IDS.ids[0], "status": "closed"}, None])
def test_a_single_object_or_null_for_several_ids_is_read_back(body: object) -> None:
    """One object (or null) for a request of several ids does not say which rows changed."""
    answer = patch_with(lambda request: httpx.Response(200, json=body))
    assert answer.rows is None
    assert len(answer.named) == (1 if body else 0)


def test_204_names_no_rows_but_counts_them() -> None:
    """204 gives rows=None (the caller must read back) and the Content-Range count."""
    answer = patch_with(lambda r: httpx.Response(204, headers={"content-range": "0-1/*"}))
    assert answer.rows is None and answer.content_range_count == 2
    answer = patch_with(lambda r: httpx.Response(204, headers={"content-range": "*/*"}))
    assert answer.content_range_count == 0


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(404, text="<html><body>Not Found</body></html>"),
        httpx.Response(404, json={"code": "PGRST205", "message": "table not found"}),
    ],
    ids=["html", "no-table"],
)
def test_a_wrong_endpoint_is_not_taken_for_no_match(response: httpx.Response) -> None:
    """A 404 from a wrong base URL stops the run, never read as "these rows do not exist"."""
    with pytest.raises(EndpointError):
        patch_with(lambda request: response)


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"message": "ok"}', b"[1, 2]", b'[{"id": 5}]', b'"text"'],
)
def test_a_200_that_names_no_conversations_is_transient(body: bytes) -> None:
    """200 with garbage, a non-row object or rows without string ids is never success."""
    with pytest.raises(TransientError):
        patch_with(lambda request: httpx.Response(200, content=body))


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_stop_and_never_show_the_token(status: int) -> None:
    """401/403 raise AuthError; the message names the problem, not the token."""
    echo = {"message": f"bad token {TOKEN}"}
    with pytest.raises(AuthError) as caught:
        patch_with(lambda request: httpx.Response(status, json=echo))
    assert caught.value.http_status == status
    assert TOKEN not in str(caught.value)


def test_a_server_echoing_the_token_is_redacted() -> None:
    """An error message that repeats the token reaches the report with the token removed."""
    body = {"code": "22P02", "message": f"invalid input near 'Bearer {TOKEN}'"}
    with pytest.raises(PermanentError) as caught:
        patch_with(lambda request: httpx.Response(400, json=body))
    assert TOKEN not in str(caught.value) and "***" in str(caught.value)
    assert caught.value.code == "22P02"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "-3"}, 0.0),
        ({"ratelimit-reset": "2"}, 2.0),
        ({}, None),
    ],
)
def test_retry_after_is_parsed_and_never_negative(
    headers: dict[str, str], expected: float | None
) -> None:
    """Retry-After in seconds or as a date; malformed ones are ignored, never crash."""
    with pytest.raises(TransientError) as caught:
        patch_with(lambda request: httpx.Response(429, headers=headers, json={"message": "slow"}))
    assert caught.value.retry_after == expected
    assert caught.value.http_status == 429


def test_an_enormous_retry_after_is_bounded() -> None:
    """A Retry-After of a year waits at most MAX_BACKOFF_SECONDS between attempts."""
    with pytest.raises(TransientError) as caught:
        patch_with(lambda request: httpx.Response(429, headers={"retry-after": "31536000"}))
    assert backoff_seconds(1, caught.value.retry_after) == MAX_BACKOFF_SECONDS


def test_html_gateway_errors_are_transient() -> None:
    """A 502 with an HTML page is a transient error with a readable message."""
    page = "<html><head><title>502 Bad Gateway</title></head></html>"
    with pytest.raises(TransientError) as caught:
        patch_with(lambda request: httpx.Response(502, text=page))
    assert caught.value.http_status == 502 and "HTML" in str(caught.value)


def test_redirects_are_not_followed() -> None:
    """A 3xx to another host is refused; the token never travels to it."""
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(307, headers={"location": "https://evil.example/steal"})

    with pytest.raises(PermanentError) as caught:
        patch_with(handler)
    assert [url.host for url in seen] == ["api.example.test"]
    assert "redirect" in str(caught.value)


def test_a_huge_answer_is_refused() -> None:
    """An answer larger than MAX_RESPONSE_BYTES is cut off, never parsed as success."""
    body = b"[" + b" " * (MAX_RESPONSE_BYTES + 10) + b"]"
    with pytest.raises(TransientError, match="larger than"):
        patch_with(lambda request: httpx.Response(200, content=body))


def test_an_answer_that_never_ends_times_out() -> None:
    """A body that trickles forever is bounded by --timeout as a whole, not per chunk."""

    async def trickle() -> AsyncIterator[bytes]:
        yield b"["
        while True:
            await anyio.sleep(0.05)
            yield b" "

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    with pytest.raises(TransientError, match="within"):
        patch_with(handler, timeout=0.3)


def test_tls_failures_stop_the_run_without_falling_back_to_http() -> None:
    """A certificate error raises ConnectionSetupError (stop), with no second, plain request."""
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        raise httpx.ConnectError("TLS failed") from ssl.SSLCertVerificationError(
            "CERTIFICATE_VERIFY_FAILED"
        )

    with pytest.raises(ConnectionSetupError, match="TLS"):
        patch_with(handler)
    assert [url.scheme for url in seen] == ["https"]


def test_connection_errors_are_transient() -> None:
    """A refused or dropped connection is worth another attempt."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    with pytest.raises(TransientError, match="connection problem"):
        patch_with(handler)


@pytest.mark.parametrize(
    "url",
    [
        "http://integration.getmateo.com/api/v1",
        "ftp://127.0.0.1/api",
        "not a url",
        "https://",
    ],
)
def test_unsafe_or_broken_base_urls_are_refused(url: str) -> None:
    """Plain http to a remote host, other schemes and hostless URLs are input errors."""
    with pytest.raises(InputError):
        check_base_url(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/api/v1/", "http://localhost/api/v1", "http://[::1]:9/api/v1"]
)
def test_plain_http_is_allowed_on_loopback(url: str) -> None:
    """The sandbox on loopback may use plain http."""
    assert check_base_url(url) == url.rstrip("/")


def test_a_request_without_ids_cannot_be_built() -> None:
    """ConversationIds refuses an empty list and anything that is not a uuid."""
    with pytest.raises(ValueError):
        ConversationIds([])
    with pytest.raises(ValueError):
        ConversationIds(["not-a-uuid"])


def test_ratelimit_reset_is_a_wait_only_on_a_429() -> None:
    """A 5xx carrying the usual ratelimit-reset header asks for no wait; its Retry-After does."""
    headers = {"ratelimit-reset": "5"}
    with pytest.raises(TransientError) as caught:
        patch_with(lambda request: httpx.Response(502, headers=headers, text="<html></html>"))
    assert caught.value.retry_after is None
    with pytest.raises(TransientError) as caught:
        patch_with(lambda request: httpx.Response(503, headers={**headers, "retry-after": "3"}))
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
def test_every_transport_verifies_with_one_tls_context_per_process(kind: str) -> None:
    """Reading the CA bundle into a TLS context costs ~20 ms: clients share one, and it still
    verifies certificates and host names."""
    first, second = make_transport(kind, 1), make_transport(kind, 1)
    contexts = [
        getattr(transport, "ssl_context", None) or transport._pool._ssl_context  # type: ignore[attr-defined]
        for transport in (first, second)
    ]
    assert contexts[0] is contexts[1]
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname
