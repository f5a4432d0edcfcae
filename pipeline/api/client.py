"""The HTTP client for Mateo's conversation endpoint: builds requests, reads every answer shape.

Mateo is PostgREST behind a proxy of its own, and several of its answers are not documented
(`docs/api.md`, "What is not known"). This module accepts all of them: a JSON array, a single
object, 204 with no body, `[]` and 404 for "matched nothing"; anything else becomes an error
of the right class (transient, permanent, auth) for the retry policy.

Every request leaves through `exchange`, whose last step checks a PATCH as it will go on the
wire: exactly one `id` filter, naming exactly the ids the caller meant. A good value in a bad
URL (a `#` in the base URL swallows the query) is still a bad request, and on the real API an
unfiltered PATCH changes every conversation of the account.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote

import anyio
import httpx

from pipeline.core.errors import (
    AuthError,
    ConnectionSetupError,
    EndpointError,
    InputError,
    PermanentError,
    SafetyError,
    TransientError,
)
from pipeline.core.models import FIELDS, NO_GUARD, Change, ConversationIds, Guard, normalise_uuid

DEFAULT_BASE_URL = "https://integration.getmateo.com/api/v1"
#: The environment variable that points every command and the Python API at another base URL.
BASE_URL_VARIABLE = "MATEO_BASE_URL"
#: The columns we ask back: enough to confirm each row and compare it with its target.
SELECT = "id," + ",".join(FIELDS)
#: Reads ask for the total of matching rows, so that a short page is known to be short.
_COUNT = {"Prefer": "count=exact"}
#: A group of at most a few hundred rows answers in a few KB; anything far larger is not an
#: answer to our request, and reading it whole would let a broken server exhaust our memory.
MAX_RESPONSE_BYTES = 1_000_000
TRANSPORTS = ("aiohttp", "httpx")
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


def check_base_url(base_url: str) -> str:
    """Return the base URL without a trailing slash, or raise InputError.

    Plain http would send the token in clear text, so it is allowed for loopback hosts only.
    A query or a fragment would change what the filters appended to the URL mean (after a `#`
    nothing is sent at all: the PATCH would go out without its id filter), user info would
    send a second credential, and a path already ending in /conversation would be doubled.
    """
    for mark, what in (("#", "a fragment (#)"), ("?", "a query (?)")):
        if mark in base_url:
            raise InputError(
                f"--base-url {base_url!r} holds {what}; give the API's base URL only, "
                "e.g. https://integration.getmateo.com/api/v1"
            )
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as error:
        raise InputError(f"--base-url {base_url!r} is not a URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InputError(f"--base-url {base_url!r} must be an https:// URL with a host")
    if url.userinfo:
        raise InputError(
            f"--base-url {_without_userinfo(url)!r} holds a user name or password; the API "
            "takes the token only (MATEO_API_TOKEN or --token-file)"
        )
    if url.path.rstrip("/").lower().endswith("/conversation"):
        raise InputError(
            f"--base-url {base_url!r} already ends in /conversation; give the base URL, "
            "e.g. https://integration.getmateo.com/api/v1"
        )
    if in_clear_text(url):
        raise InputError(
            f"--base-url {base_url!r} uses plain http, which would send the API token in clear "
            "text; use https:// (http:// is allowed for 127.0.0.1 and localhost only)"
        )
    return str(url).rstrip("/")


def _without_userinfo(url: httpx.URL) -> str:
    # The password must not reach the terminal, a log or a report.
    return str(url.copy_with(username=None, password=None))


def check_patch_target(request: httpx.Request, ids: ConversationIds | None) -> None:
    """Raise SafetyError unless `request`, as it will be sent, PATCHes exactly `ids`.

    The URL is checked as httpx will put it on the wire: the path must end in /conversation and
    the query must hold exactly one `id` parameter, equal to `ids`' filter. Any other parameter
    is a guard or `select`, which can only narrow what the id filter selects.
    """
    if request.method != "PATCH":
        return
    url = request.url
    path, _, query = url.raw_path.decode("ascii", "replace").partition("?")
    id_filters = [value for name, value in parse_qsl(query, keep_blank_values=True) if name == "id"]
    problem = None
    if ids is None:
        problem = "no ids were named for it"
    elif url.fragment or not path.endswith("/conversation"):
        problem = "its URL is not the conversation endpoint"
    elif len(id_filters) != 1:
        problem = f"its URL carries {len(id_filters)} id filters, not exactly one"
    elif id_filters[0] != ids.filter_value():
        problem = "its id filter is not the ids of the group"
    if problem is not None:
        raise SafetyError(f"a PATCH was about to be sent unguarded ({problem}); nothing was sent")


def in_clear_text(url: httpx.URL) -> bool:
    """Plain http to a host other than loopback: what is sent could be read on the way.

    The one rule for every URL mateo-bulk sends a secret to: the API (the token) and a
    notification webhook (whose URL is itself the credential).
    """
    return url.scheme == "http" and not _is_loopback(url.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_transport(kind: str, max_connections: int) -> httpx.AsyncBaseTransport:
    """The connection pool, sized to the number of requests we allow in flight.

    With the pool as large as the number of workers, no request ever waits for a connection,
    so httpx's PoolTimeout cannot happen and a pool wait never counts against a row's attempts.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if kind == "aiohttp":
        # httpx's API over aiohttp's connection pool: httpcore's pool re-scans every connection
        # on each request and slows sharply past ~24 in flight (see bench/ for the figures).
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits, trust_env=False)
    if kind == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    raise InputError(f"unknown transport {kind!r}: choose one of {', '.join(TRANSPORTS)}")


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

    async def patch(self, ids: ConversationIds, change: Change, guard: Guard = NO_GUARD) -> Answer:
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


async def exchange(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    timeout: float,
    redact: Callable[[str], str],
    ids: ConversationIds | None = None,
) -> tuple[httpx.Response, bytes]:
    """Send one request and read its whole answer, bounded in time and size.

    A PATCH must name the `ids` it may touch, and is checked against them as it will go on the
    wire (SafetyError, nothing sent). Raises TransientError (timeout, connection problem, an
    answer too large or unreadable) or ConnectionSetupError (TLS), with the token removed from
    every message by `redact` before it is shortened. No other exception of either transport
    escapes: a broken answer is a failed request, never a crash.
    """
    check_patch_target(request, ids)
    writes = request.method == "PATCH"
    try:
        with anyio.fail_after(timeout):
            response = await http.send(request, stream=True)
            try:
                body = await _read_capped(response)
            finally:
                await response.aclose()
    except TimeoutError:
        raise TransientError(
            f"no complete answer within {timeout:g} s", may_have_applied=writes
        ) from None
    except httpx.TransportError as error:
        reason = str(error) or type(error).__name__
        if _is_tls_failure(error):
            # Never fall back to http: the token would travel in clear text.
            raise ConnectionSetupError(
                _shortened(redact(f"the TLS connection to the API failed: {reason}"))
            ) from None
        unreached = _never_reached(error)
        if unreached is not None:
            raise TransientError(
                _shortened(redact(f"{unreached}: {reason}")), reached_api=False
            ) from None
        what = "timed out" if isinstance(error, httpx.TimeoutException) else "connection problem"
        # The request left: a PATCH may have been applied before the answer was lost.
        raise TransientError(
            _shortened(redact(f"{what}: {reason}")), may_have_applied=writes
        ) from None
    except (TransientError, anyio.get_cancelled_exc_class()):
        raise
    except Exception as error:  # noqa: BLE001 - the transport boundary: see the docstring
        # httpx.DecodingError, aiohttp's own errors (a header over 8 KB), h11's protocol errors:
        # whatever a broken server provokes in either transport is an answer we cannot read.
        reason = str(error) or type(error).__name__
        raise TransientError(
            _shortened(redact(f"unreadable answer ({type(error).__name__}): {reason}")),
            may_have_applied=writes,
        ) from None
    return response, body


def _shortened(text: str, limit: int = 500) -> str:
    """Text cut to `limit` characters; always applied after redaction, never before."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


_DNS_FAILURES = (
    "name or service not known",
    "temporary failure in name resolution",
    "nodename nor servname",
    "no address associated",
    "getaddrinfo failed",
)


def _never_reached(error: BaseException) -> str | None:
    """Why a request never reached the server (refused, DNS, no connection), or None.

    Decided from the original exception: httpx-aiohttp maps every aiohttp connection error,
    a connection dropped mid-answer included, to httpx.ConnectTimeout, so the mapped class
    alone would call a PATCH that may have landed "never sent".
    """
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {cls.__name__ for link in chain for cls in type(link).__mro__}
    from_aiohttp = any(type(link).__module__.startswith("aiohttp") for link in chain)
    if from_aiohttp:
        connected = "ClientConnectorError" not in names
    else:
        connected = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
    if connected:
        return None
    text = " ".join(str(link) for link in chain).lower()
    if "ClientConnectorDNSError" in names or any(words in text for words in _DNS_FAILURES):
        return "the API's host name could not be resolved (DNS)"
    if "refused" in text or "connect call failed" in text:
        return "the connection to the API was refused"
    return "no connection to the API could be made"


def _is_tls_failure(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise TransientError(
                f"the answer is larger than {MAX_RESPONSE_BYTES:,} bytes; refused",
                http_status=response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


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
        return None, _shortened(redact(text), 200) or None
    if not isinstance(data, dict):
        return None, None
    code = data.get("code")
    parts = [str(data[key]) for key in ("message", "details", "hint") if data.get(key)]
    message = _shortened(redact("; ".join(parts))) or None
    return (_shortened(redact(str(code)), 40) if code is not None else None), message


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
