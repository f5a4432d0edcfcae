"""The HTTP client for Mateo's conversation endpoint: builds requests, reads every answer shape.

Mateo is PostgREST behind a proxy of its own, and several of its answers are not documented
(`docs/api.md`, "What is not known"). This module accepts all of them: a JSON array, a single
object, 204 with no body, `[]` and 404 for "matched nothing"; anything else becomes an error
of the right class (transient, permanent, auth) for the retry policy.

Every request leaves through `wire.exchange`, which checks a PATCH as it will go on the wire.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from pipeline.api.wire import check_base_url, exchange, make_transport, shortened
from pipeline.core.errors import AuthError, EndpointError, PermanentError, TransientError
from pipeline.core.models import (
    FIELDS,
    NO_GUARD,
    ConversationIds,
    FieldValues,
    Guard,
    normalise_uuid,
)

DEFAULT_BASE_URL = "https://integration.getmateo.com/api/v1"
#: The environment variable that points every command and the Python API at another base URL.
BASE_URL_VARIABLE = "MATEO_BASE_URL"
#: The columns we ask back: enough to confirm each row and compare it with its target.
SELECT = "id," + ",".join(FIELDS)
#: Reads ask for the total of matching rows, so that a short page is known to be short.
_COUNT = {"Prefer": "count=exact"}
_LONGEST_WAIT_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer and what it tells about which rows changed."""

    http_status: int
    #: Every row the request changed, or None when the answer does not tell (204, no body, or
    #: a single object for a request of several ids): then the caller must read them back.
    rows: list[dict[str, Any]] | None
    #: Rows counted by a `Content-Range` header, when the server sent one.
    content_range_count: int | None = None
    #: Every row the server named, complete or not; all must be rows we asked for.
    named: tuple[dict[str, Any], ...] = ()
    single_object: bool = False
    #: `ratelimit-remaining` and `ratelimit-reset` (seconds), when the server sends them.
    ratelimit_remaining: int | None = None
    ratelimit_reset: float | None = None
    #: The rows matching the request in all, from `Content-Range: 0-19/130` (`Prefer:
    #: count=exact`), when the server sent a total: a read with fewer rows has more pages.
    content_range_total: int | None = None


class MateoClient:
    """Sends PATCH and GET requests for groups of conversations; one instance per run."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        max_connections: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        transport_kind: str = "aiohttp",
    ) -> None:
        self._endpoint = check_base_url(base_url) + "/conversation"
        self._token = token
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            transport=transport or make_transport(transport_kind, max_connections),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            # The whole request, including a body that trickles in forever, is bounded by
            # anyio.fail_after below; httpx's own timeouts guard each phase, and waiting for
            # a pooled connection is never a timeout (see make_transport).
            timeout=httpx.Timeout(timeout, pool=None),
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> MateoClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def patch(
        self, ids: ConversationIds, change: FieldValues, guard: Guard = NO_GUARD
    ) -> Answer:
        """PATCH the conversations named by `ids` (and still matching `guard`) with `change`."""
        url = f"{self._endpoint}?id={ids.filter_value()}{_guard_query(guard)}&select={SELECT}"
        # return=representation and select together get a body back whether the proxy follows
        # plain PostgREST (Prefer) or Mateo's docs (select).
        headers = {"Prefer": "return=representation", "Content-Type": "application/json"}
        content = json.dumps(change.body()).encode()
        answer = await self._send("PATCH", url, headers=headers, content=content, ids=ids)
        if answer.rows is not None and answer.single_object and len(ids) > 1:
            # Mateo documents "the updated Conversation object": a proxy that answers one
            # object for a request of many names one row at most, so the rest are unknown.
            return dataclasses.replace(answer, rows=None)
        return answer

    async def read(self, ids: ConversationIds) -> Answer:
        """GET one page of the current values of `ids` (at most 50, the API's page size).

        The answer may hold fewer rows than exist (a proxy may cap pages lower): the caller
        pages on (see `request_path.read_rows`), helped by the total that `count=exact` asks for.
        """
        if len(ids) > 50:
            raise ValueError("the API returns at most 50 rows per GET")
        url = f"{self._endpoint}?id={ids.filter_value()}&select={SELECT}&order=id.asc&limit=50"
        answer = await self._send("GET", url, headers=_COUNT, content=None)
        if answer.single_object and len(ids) > 1:
            # One object cannot be the whole answer to a read of several ids.
            raise TransientError("the answer to a read of several rows is a single object")
        return _read_rows(answer)

    async def query(
        self, filters: Mapping[str, str], *, after_id: str | None, limit: int = 50
    ) -> Answer:
        """GET one page of the conversations matching `filters`, in id order after `after_id`.

        Keyset paging on id, not offsets: rows that stop matching while we read (we are about
        to change them) cannot shift a later page and make us skip rows.
        """
        url = f"{self._endpoint}?select={SELECT}&order=id.asc&limit={limit}"
        if after_id is not None:
            url += f"&id=gt.{normalise_uuid(after_id)}"
        # Guard.of refuses an `id` filter, so the filters cannot override the keyset.
        url += _guard_query(Guard.of(filters))
        answer = await self._send("GET", url, headers=_COUNT, content=None)
        return _read_rows(answer)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        content: bytes | None,
        ids: ConversationIds | None = None,
    ) -> Answer:
        request = self._http.build_request(method, url, headers=headers, content=content)
        response, body = await exchange(
            self._http, request, ids=ids, timeout=self._timeout, redact=self._redact
        )
        return self._interpret(method, response, body)

    def _interpret(self, method: str, response: httpx.Response, body: bytes) -> Answer:
        status = response.status_code
        if status in (200, 201, 206):
            rows, single_object = _rows_from_body(body, may_have_applied=method == "PATCH")
            return Answer(
                status,
                rows,
                _content_range_count(response),
                tuple(rows or ()),
                single_object,
                *_ratelimit(response),
                content_range_total=_content_range_total(response),
            )
        if status == 204:
            return Answer(
                status, None, _content_range_count(response), (), False, *_ratelimit(response)
            )
        code, message = _error_details(body, self._redact)
        message = message or response.reason_phrase or f"HTTP {status}"
        if status == 404 and method == "PATCH" and _means_no_match(code, body):
            # PostgREST before v10.1 answered a PATCH that matched nothing with 404.
            return Answer(status, [], None)
        if status == 404:
            # A read never answers 404 for "no rows"; a page or PGRST205 means no such endpoint.
            endpoint = self._redact(str(response.url.copy_with(query=None)))
            raise EndpointError(
                f"the API answered 404 ({message}) at {endpoint}: check --base-url (it should "
                "end in /api/v1); nothing was changed by this answer"
            )
        if status in (401, 403):
            raise AuthError(
                "the API token is missing" if status == 401 else "the API token is not valid",
                http_status=status,
            )
        if status == 429 or status >= 500:
            raise TransientError(
                message,
                http_status=status,
                code=code,
                retry_after=_retry_after(response, rate_limited=status == 429),
                # A 429 is refused before any work; a 5xx may come after a commit (a gateway
                # that gave up while the database carried on).
                may_have_applied=status >= 500 and method == "PATCH",
            )
        if 300 <= status < 400:
            location = self._redact(response.headers.get("location", "?"))
            raise PermanentError(
                f"the API answered with a redirect to {location}, which is not followed: "
                "check --base-url",
                http_status=status,
            )
        raise PermanentError(message, http_status=status, code=code)

    def _redact(self, text: str) -> str:
        """Remove the token from text that may echo it (a server's error, a URL)."""
        return text.replace(self._token, "***") if self._token else text


def _read_rows(answer: Answer) -> Answer:
    """A read's answer must list rows: a GET is answered with an array, even an empty one.

    An empty body or `null` says nothing about which rows exist; taken for "none", it would
    turn existing conversations into not_found.
    """
    if answer.rows is None:
        raise TransientError(f"a read was answered {answer.http_status} without rows")
    return answer


def _guard_query(guard: Guard) -> str:
    # Guard values (timestamps with "+", uuids) are encoded; the operator prefix stays readable.
    return "".join(f"&{column}={quote(value, safe='.,()')}" for column, value in guard.filters)


def _rows_from_body(
    body: bytes, *, may_have_applied: bool
) -> tuple[list[dict[str, Any]] | None, bool]:
    """The rows an answer names, and whether it was a bare object (Mateo's docs) not an array.

    An empty body or JSON null names no rows: (None, False). A body we cannot read is a failed
    attempt; after a 2xx PATCH it may have been applied all the same.
    """
    if not body.strip():
        return None, False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's stack.
        raise TransientError("the answer is not JSON", may_have_applied=may_have_applied) from None
    if data is None:
        return None, False
    single_object = isinstance(data, dict)
    if single_object:
        data = [data]
    if not isinstance(data, list) or not all(
        isinstance(row, dict) and isinstance(row.get("id"), str) for row in data
    ):
        raise TransientError(
            "the answer is not a list of conversations", may_have_applied=may_have_applied
        )
    return data, single_object


def _content_range_total(response: httpx.Response) -> int | None:
    """The total of `Content-Range: 0-19/130`, or None for `/*` or no header."""
    total = response.headers.get("content-range", "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _content_range_count(response: httpx.Response) -> int | None:
    """Rows counted by `Content-Range: 0-<n-1>/*` (or `*/*` for none)."""
    value = response.headers.get("content-range")
    if not value:
        return None
    span = value.split("/", 1)[0].strip()
    if span == "*":
        return 0
    first, _, last = span.partition("-")
    try:
        return int(last) - int(first) + 1
    except ValueError:
        return None


def _error_details(body: bytes, redact: Callable[[str], str]) -> tuple[str | None, str | None]:
    """The code and message of an error body; every key optional, HTML and garbage allowed.

    The message is redacted before it is shortened: cut first, a token it echoes could be cut
    in two and half of it would pass the redaction into the report.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        text = body.decode("utf-8", "replace").strip()
        if text.lstrip().startswith("<"):
            return None, "an HTML error page"
        return None, shortened(redact(text), 200) or None
    if not isinstance(data, dict):
        return None, None
    code = data.get("code")
    parts = [str(data[key]) for key in ("message", "details", "hint") if data.get(key)]
    message = shortened(redact("; ".join(parts))) or None
    return (shortened(redact(str(code)), 40) if code is not None else None), message


def _means_no_match(code: str | None, body: bytes) -> bool:
    # A wrong base URL also answers 404, with an HTML page or PostgREST's "table not found":
    # that is not "this conversation does not exist", and must not turn rows into not_found.
    if code == "PGRST205":
        return False
    stripped = body.strip()
    return not stripped.startswith(b"<")


def _ratelimit(response: httpx.Response) -> tuple[int | None, float | None]:
    """`ratelimit-remaining` and `ratelimit-reset`, when present and readable."""
    remaining = response.headers.get("ratelimit-remaining")
    reset = response.headers.get("ratelimit-reset")
    try:
        remaining_count = int(remaining) if remaining is not None else None
    except ValueError:
        remaining_count = None
    return remaining_count, _parse_seconds(reset) if reset is not None else None


def _retry_after(response: httpx.Response, *, rate_limited: bool) -> float | None:
    """Seconds to wait: `Retry-After` (seconds or HTTP date); on a 429, `ratelimit-reset` too.

    `ratelimit-reset` rides on every answer and says when the rate window refills; it is a
    reason to wait only when the request was refused for the rate. Read on a 5xx, it would
    pause every worker for a window that has nothing to do with the error.
    """
    names = ("retry-after", "ratelimit-reset") if rate_limited else ("retry-after",)
    for name in names:
        value = response.headers.get(name)
        if value is None:
            continue
        seconds = _parse_seconds(value)
        if seconds is not None:
            return seconds
    return None


def _parse_seconds(value: str) -> float | None:
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:
            # HTTP dates are in GMT; a "-0000" zone parses as naive, which .timestamp() would
            # read in the machine's local time.
            moment = moment.replace(tzinfo=UTC)
        try:
            seconds = moment.timestamp() - time.time()
        except (ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    # A wait longer than a week is not a rate limit anyone means; bounded so that date
    # arithmetic on it can never overflow.
    return min(max(0.0, seconds), _LONGEST_WAIT_SECONDS)


def returned_values(row: dict[str, Any]) -> dict[str, str | None]:
    """The fields we compare, from one returned row, as strings (uuids normalised)."""
    values: dict[str, str | None] = {}
    for name in FIELDS:
        if name not in row:
            continue
        value = row[name]
        values[name] = None if value is None else str(value)
    return values


def returned_id(row: dict[str, Any]) -> str | None:
    try:
        return normalise_uuid(str(row["id"]))
    except (KeyError, ValueError):
        return None
