"""One request on the wire: the checks a URL passes before anything is sent, the connection
pool, and `exchange`, which sends a request and reads its whole answer.

Every request leaves through `exchange`, whose last step checks a PATCH as it will go on the
wire: exactly one `id` filter, naming exactly the ids the caller meant. A good value in a bad
URL (a `#` in the base URL swallows the query) is still a bad request, and on the real API an
unfiltered PATCH changes every conversation of the account.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Callable
from urllib.parse import parse_qsl

import anyio
import httpx

from pipeline.core.errors import ConnectionSetupError, InputError, SafetyError, TransientError
from pipeline.core.models import ConversationIds

#: A group of at most a few hundred rows answers in a few KB; anything far larger is not an
#: answer to our request, and reading it whole would let a broken server exhaust our memory.
MAX_RESPONSE_BYTES = 1_000_000
TRANSPORTS = ("aiohttp", "httpx")


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

        return AiohttpTransport(verify=_tls_context(), limits=limits, trust_env=False)
    if kind == "httpx":
        return httpx.AsyncHTTPTransport(verify=_tls_context(), limits=limits, trust_env=False)
    raise InputError(f"unknown transport {kind!r}: choose one of {', '.join(TRANSPORTS)}")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context every client of this process shares.

    Each transport would build its own otherwise, reading the whole CA bundle (~20 ms of CPU):
    once per run, doctor probe and job. A context is safe to share once made; its settings are
    httpx's defaults without the environment's (trust_env=False, as for the transports).
    """
    return httpx.create_ssl_context(trust_env=False)


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
                shortened(redact(f"the TLS connection to the API failed: {reason}"))
            ) from None
        unreached = _never_reached(error)
        if unreached is not None:
            raise TransientError(
                shortened(redact(f"{unreached}: {reason}")), reached_api=False
            ) from None
        what = "timed out" if isinstance(error, httpx.TimeoutException) else "connection problem"
        # The request left: a PATCH may have been applied before the answer was lost.
        raise TransientError(
            shortened(redact(f"{what}: {reason}")), may_have_applied=writes
        ) from None
    except (TransientError, anyio.get_cancelled_exc_class()):
        raise
    except Exception as error:  # noqa: BLE001 - the transport boundary: see the docstring
        # httpx.DecodingError, aiohttp's own errors (a header over 8 KB), h11's protocol errors:
        # whatever a broken server provokes in either transport is an answer we cannot read.
        reason = str(error) or type(error).__name__
        raise TransientError(
            shortened(redact(f"unreadable answer ({type(error).__name__}): {reason}")),
            may_have_applied=writes,
        ) from None
    return response, body


def shortened(text: str, limit: int = 500) -> str:
    """Text cut to `limit` characters; always applied after redaction, never before."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
