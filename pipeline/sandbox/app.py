"""The ASGI app: Mateo's `/api/v1/conversation` as PostgREST behind a proxy, plus `/_sandbox/`.

A raw ASGI callable rather than a framework: the sandbox must never be the bottleneck when the
pipeline is measured against it. The order of checks follows the layers of the real stack:
nginx (URL length), the gateway (quota, rate, API key, faults, cut-off), then PostgREST.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from pipeline.sandbox import schema
from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.errors import ApiError, gateway_page
from pipeline.sandbox.query import ID_ORDER, has_id_guard, parse_query, project, sort_rows
from pipeline.sandbox.state import SandboxState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Header = tuple[bytes, bytes]

API_PREFIX = "/api/v1/"
RESOURCE = "/api/v1/conversation"
OBJECT_MEDIA_TYPE = "application/vnd.pgrst.object+json"
_JSON = b"application/json; charset=utf-8"
_HTML = b"text/html"
_DROP_MESSAGE = "ASGI callable returned without completing response."
#: Hostile answers that are sent instead of doing the work: nothing is committed.
_HOSTILE_WITHOUT_COMMIT = frozenset(
    ("not_json", "object", "huge_body", "endless", "redirect", "bad_retry_after")
)
_HUGE_BODY_BYTES = 10 * 1024 * 1024
_TRICKLE_INTERVAL = 0.1
#: Retry-After values of --bad-retry-after: neither seconds nor a date; a year; and a
#: well-formed number of seconds that ends past the year 9999, which no date type can hold.
_BAD_RETRY_AFTERS = {
    "malformed": b"in a little while",
    "enormous": b"31536000",
    "absurd": b"999999999999",
}


class _Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[Header], body: bytes | None) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Write:
    """What one request did to the table, for the request log; a PATCH fills it in as it runs.

    Kept apart from the answer because some answers (a cut-off, an injected 503 after the
    commit) are sent in place of the one the update produced, and the log must still name the
    rows that changed.
    """

    __slots__ = ("ids_matched", "ids_updated", "committed")

    def __init__(self) -> None:
        self.ids_matched: list[str] = []
        self.ids_updated: list[str] = []
        self.committed = False


class _Disconnected(Exception):
    pass


class _QuietDroppedConnections(logging.Filter):
    """The dropped-connection fault is on purpose: keep uvicorn from logging it as a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DROP_MESSAGE


_quiet_filter = _QuietDroppedConnections()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _row_order_rng(fault_seed: int) -> random.Random:
    # A generator of its own: shuffling reads must not shift the fault draws of a given seed.
    return random.Random(f"row-order:{fault_seed}")


class SandboxApp:
    """The sandbox's ASGI callable; `configure()` changes its switches while it serves."""

    def __init__(self, config: SandboxConfig, state: SandboxState) -> None:
        self.config = config
        self.state = state
        self._rng = random.Random(config.fault_seed)
        self._row_order_rng = _row_order_rng(config.fault_seed)
        self._wakeup: asyncio.Event | None = None
        self._closing = False
        self._generation = 0
        self._bad_retry_afters = 0
        state.configure_limits(config)
        state.set_redaction(config.token)
        logging.getLogger("uvicorn.error").addFilter(_quiet_filter)

    # --- switches ------------------------------------------------------------------------

    def configure(self, **changes: Any) -> SandboxConfig:
        """Replace some switches; a new fault_seed restarts the random draws."""
        self.set_config(self.config.replace(**changes))
        return self.config

    def set_config(self, config: SandboxConfig) -> None:
        previous = self.config
        self.config = config
        if config.fault_seed != previous.fault_seed:
            self._rng = random.Random(config.fault_seed)
            self._row_order_rng = _row_order_rng(config.fault_seed)
        self.state.configure_limits(config)
        self.state.set_redaction(config.token)

    def restart_faults(self) -> None:
        """Draw faults, and the order of unordered reads, from the start of the seed again."""
        self._rng = random.Random(self.config.fault_seed)
        self._row_order_rng = _row_order_rng(self.config.fault_seed)
        self._bad_retry_afters = 0

    def start_new_generation(self) -> None:
        """Requests still sleeping when the sandbox is reset must not touch the fresh rows."""
        self._generation += 1

    def wake_sleepers(self, *, for_good: bool = False) -> None:
        """Cut every added delay short; with `for_good` (shutdown) add none from now on.

        Call from the server's event loop.
        """
        if for_good:
            self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def _sleep(self, seconds: float) -> None:
        # asyncio may fire a timer up to its clock resolution early, and uvloop's clock is the
        # time its loop iteration began, in whole milliseconds: a cut-off that answers before
        # its delay is over would be kinder than the proxy it stands for, so the delay is
        # waited out against time.monotonic, the clock the request log measures with.
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while not self._closing and (remaining := deadline - time.monotonic()) > 0:
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
                return  # woken: the delays were cut short
            except TimeoutError:
                pass

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith("/api/"):
                await self._api(scope, receive, send)
            elif path.startswith("/_sandbox/"):
                await self._introspect(scope, receive, send)
            else:
                await _send(
                    send,
                    404,
                    [(b"content-type", _JSON)],
                    _dumps({"error": f"no such path: {path}; the API is under /api/v1/"}),
                )
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.config
        state = self.state
        arrived = state.clock()
        method = scope["method"]
        query_string: bytes = scope["query_string"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target_length = len(raw_path) + (len(query_string) + 1 if query_string else 0)
        state.record_arrival(method, arrived)
        fault: str | None = None
        write = _Write()
        response = _Response(500, [], None)
        try:
            if config.max_url_length is not None and target_length > config.max_url_length:
                # nginx refuses the request line before the gateway ever counts it.
                response = _Response(414, [(b"content-type", _HTML)], gateway_page(414))
            else:
                response, fault = await self._gateway(
                    scope, receive, config, arrived, method, write
                )
                if fault == "drop":
                    response = _cut_short(response)
                    await _send_partial(send, response)
                    return
                if fault == "endless":
                    await self._trickle(send, receive, response)
                    return
        except _Disconnected:
            response = _Response(499, [], None)
            return
        finally:
            state.record_answer(response.status)
            if state.logging_requests:
                state.log_request(
                    method=method,
                    path=raw_path.decode("latin-1"),
                    query=query_string.decode("latin-1"),
                    status=response.status,
                    arrived=arrived,
                    duration=state.clock() - arrived,
                    ids_matched=write.ids_matched,
                    ids_updated=write.ids_updated,
                    committed=write.committed,
                    fault=fault,
                )
        await _send(send, response.status, response.headers, response.body)

    async def _gateway(
        self,
        scope: Scope,
        receive: Receive,
        config: SandboxConfig,
        arrived: float,
        method: str,
        write: _Write,
    ) -> tuple[_Response, str | None]:
        state = self.state
        style = config.error_body
        refusal = state.admit(arrived)
        limit_headers = state.limit_headers(config, arrived)
        if refusal is not None:
            headers = list(limit_headers)
            if config.retry_after_header:
                headers.append((b"retry-after", str(refusal.retry_after).encode()))
            error = ApiError(
                429,
                "RATE_LIMITED",
                f"Too many requests: {refusal.reason}",
                hint=f"Retry after {refusal.retry_after} second(s).",
            )
            return _error_response(error, style, headers), None
        headers_in = scope["headers"]
        authorization = _header(headers_in, b"authorization")
        auth_error = _check_token(authorization, config.token)
        if auth_error is not None:
            return _error_response(auth_error, style, limit_headers), None
        body = await _read_body(receive) if method in ("PATCH", "POST", "PUT") else b""

        fault, delay = self._draw_faults(config)
        if fault is not None:
            state.record_fault(fault)
        generation = self._generation
        if fault in ("500", "502", "503"):
            await self._sleep(min(delay, config.cutoff_seconds or delay))
            return _fault_response(fault, config, limit_headers), fault
        if fault in _HOSTILE_WITHOUT_COMMIT:
            await self._sleep(min(delay, config.cutoff_seconds or delay))
            return self._hostile_response(fault, scope, config, limit_headers), fault
        if config.cutoff_seconds is not None and delay > config.cutoff_seconds:
            await self._sleep(config.cutoff_seconds)
            if self._generation != generation:
                return _reset_response(config), "reset"
            if config.cutoff_commits:
                self._handle(scope, method, body, config, write)
            state.record_fault("cutoff")
            return _cutoff_response(config, limit_headers), "cutoff"
        await self._sleep(delay)
        if self._generation != generation:
            return _reset_response(config), "reset"
        response = self._handle(scope, method, body, config, write)
        response.headers.extend(limit_headers)
        if fault == "applied_503":
            return _fault_response("503", config, limit_headers), fault
        if fault == "foreign_rows" and response.status in (200, 204):
            self._add_foreign_row(scope, response)
        return response, fault

    def _draw_faults(self, config: SandboxConfig) -> tuple[str | None, float]:
        """Which fault (at most one of the exclusive kinds), the latency, and whether the answer
        is very slow: all from the seeded generator, so the same seed fails the same way."""
        rng = self._rng
        fault: str | None = None
        exclusive = (
            ("500", config.fault_500),
            ("502", config.fault_502),
            ("503", config.fault_503),
            ("drop", config.fault_drop),
            ("applied_503", config.fault_applied_503),
            ("not_json", config.fault_not_json),
            ("object", config.fault_object),
            ("foreign_rows", config.fault_foreign_rows),
            ("huge_body", config.fault_huge_body),
            ("endless", config.fault_endless),
            ("redirect", config.fault_redirect),
            ("bad_retry_after", config.fault_bad_retry_after),
        )
        if any(probability for _, probability in exclusive):
            roll = rng.random()
            for kind, probability in exclusive:
                if roll < probability:
                    fault = kind
                    break
                roll -= probability
        delay = 0.0
        if config.latency_ms > 0:
            mean = config.latency_ms / 1000
            if config.latency_distribution == "fixed":
                delay = mean
            elif config.latency_distribution == "uniform":
                delay = rng.uniform(0, 2 * mean)
            else:
                delay = rng.expovariate(1 / mean)
        if config.fault_slow > 0 and rng.random() < config.fault_slow:
            delay += config.slow_seconds
            if fault is None:
                fault = "slow"
        return fault, delay

    # --- hostile answers ----------------------------------------------------------------

    def _hostile_response(
        self, fault: str, scope: Scope, config: SandboxConfig, limit_headers: list[Header]
    ) -> _Response:
        """A broken or malicious server's answer, sent instead of doing the work."""
        if fault == "redirect":
            origin = config.fault_redirect_to or f"http://127.0.0.2:{_server_port(scope)}"
            query = scope["query_string"].decode("latin-1")
            location = f"{origin.rstrip('/')}/steal{scope['path']}" + (f"?{query}" if query else "")
            headers = [(b"location", location.encode()), (b"content-type", _HTML), *limit_headers]
            return _Response(307, headers, b"<html><body>Moved</body></html>")
        if fault == "bad_retry_after":
            value = self._bad_retry_after(config)
            headers = [
                *(header for header in limit_headers if header[0] != b"ratelimit-reset"),
                (b"retry-after", value),
                (b"ratelimit-reset", value),
            ]
            error = ApiError(429, "RATE_LIMITED", "Too many requests: rate limit exceeded")
            return _error_response(error, config.error_body, headers)
        headers = [(b"content-type", _JSON), *limit_headers]
        if fault == "not_json":
            # A proxy that answers with a page of its own but keeps the JSON content type.
            return _Response(200, headers, b"<html><body>OK</body></html>")
        if fault == "endless":
            return _Response(200, headers, None)
        try:
            rows = self._rows_as_they_stand(scope)
        except ApiError as error:
            return _error_response(error, config.error_body, limit_headers)
        if fault == "object":
            payload: Any = (
                (rows[0] if rows else {})
                if config.fault_object_shape == "row"
                else {"data": rows, "count": len(rows)}
            )
            return _Response(200, headers, _dumps(payload))
        # huge_body: a valid array of the rows, so only a size cap stops a client taking it.
        items = b",".join(_dumps(row) for row in rows)
        padding = b" " * max(0, _HUGE_BODY_BYTES - len(items) - 2)
        return _Response(200, headers, b"[" + items + padding + b"]")

    def _rows_as_they_stand(self, scope: Scope) -> list[dict[str, Any]]:
        """The rows a request's filters select, unchanged, shaped by its select (at most 50)."""
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = parse_query(pairs, default_order=False)
        with self.state.lock:
            matched = self.state.match(query)[: self.config.max_rows]
            return [project(row, query.select) for row in matched]

    def _bad_retry_after(self, config: SandboxConfig) -> bytes:
        kind = config.bad_retry_after
        if kind == "alternate":
            kinds = tuple(_BAD_RETRY_AFTERS)
            kind = kinds[self._bad_retry_afters % len(kinds)]
            self._bad_retry_afters += 1
        return _BAD_RETRY_AFTERS[kind]

    def _add_foreign_row(self, scope: Scope, response: _Response) -> None:
        """Name one more real row, one the request did not ask for, in a 200 array."""
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = parse_query(pairs, default_order=False)
        asked = query.id_candidates or frozenset()
        named: Any = json.loads(response.body) if response.body else []
        rows = named if isinstance(named, list) else [] if named is None else [named]
        named_ids = {row.get("id") for row in rows}
        with self.state.lock:
            foreign = next(
                (
                    row
                    for row in self.state.dataset.rows
                    if row["id"] not in asked and row["id"] not in named_ids
                ),
                None,
            )
            if foreign is None:
                return
            current = self.state.row(str(foreign["id"])) or foreign
            rows.append(project(current, query.select))
        response.status = 200
        response.headers = [
            header
            for header in response.headers
            if header[0] not in (b"content-type", b"content-range")
        ]
        response.headers.append((b"content-type", _JSON))
        response.body = _dumps(rows)

    async def _trickle(self, send: Send, receive: Receive, response: _Response) -> None:
        """Send the headers, then one byte every 100 ms until the client hangs up.

        The body is never finished: at a reset or shutdown the connection is closed mid-body,
        so a client still reading sees a broken answer, never a complete (empty) one.
        """
        await send(
            {"type": "http.response.start", "status": response.status, "headers": response.headers}
        )
        generation = self._generation
        hung_up = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            chunk = b"["
            while not self._closing and self._generation == generation:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = b" "
                await asyncio.wait((hung_up,), timeout=_TRICKLE_INTERVAL)
                if hung_up.done():
                    return
        finally:
            hung_up.cancel()

    def _handle(
        self, scope: Scope, method: str, body: bytes, config: SandboxConfig, write: _Write
    ) -> _Response:
        """PostgREST's part: everything after the gateway let the request through."""
        style = config.error_body
        path = scope["path"]
        if path != RESOURCE and path != RESOURCE + "/":
            name = path[len(API_PREFIX) :] if path.startswith(API_PREFIX) else path
            return _error_response(
                ApiError(
                    404, "PGRST205", f"Could not find the table 'public.{name}' in the schema cache"
                ),
                style,
            )
        try:
            if method == "PATCH":
                return self._patch(scope, body, config, write)
            if method in ("GET", "HEAD"):
                response = self._get(scope, config)
                if method == "HEAD":
                    response.body = None
                return response
            raise ApiError(
                405,
                "PGRST117",
                f"Unsupported HTTP method: {method}",
                hint="The sandbox serves GET and PATCH on /api/v1/conversation.",
            )
        except ApiError as error:
            return _error_response(error, style)

    # --- PATCH ---------------------------------------------------------------------------

    def _patch(self, scope: Scope, body: bytes, config: SandboxConfig, write: _Write) -> _Response:
        state = self.state
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if not has_id_guard(pairs):
            state.record_safety_violation()
            raise ApiError(
                400,
                "21000",
                "UPDATE requires a WHERE clause",
                details="A PATCH must select its rows with id=eq.<uuid> or "
                "id=in.(<uuid>,...); this one could reach every conversation.",
                hint="Filter by id.",
            )
        query = parse_query(pairs, default_order=False)
        prefer = _Preferences(scope["headers"], config)
        single = config.force_single_object or _wants_object(scope["headers"])
        changes = _parse_changes(
            body, config, query.columns, missing_default=prefer.missing_default
        )
        with state.lock:
            matched = state.match(query) if changes else []
            write.ids_matched = [row["id"] for row in matched]
            if matched:
                _check_foreign_keys(changes, state.inbox_ids, state.agent_ids)
            count = len(matched)
            if single and count != 1:
                raise ApiError(
                    406,
                    "PGRST116",
                    "Cannot coerce the result to a single JSON object",
                    details=f"The result contains {count} rows",
                )
            if prefer.max_affected is not None and count > prefer.max_affected:
                raise ApiError(
                    400,
                    "PGRST124",
                    "Query result exceeds max-affected preference constraint",
                    details=f"The query affects {count} rows",
                )
            updated = state.update(matched, changes)
            ids = [row["id"] for row in updated]
            wants_body = prefer.representation or (config.select_returns_body and query.has_select)
            if wants_body and query.order:
                # PostgREST >= 13 orders the returned representation by ?order=.
                updated = sort_rows(updated, query.order)
            shaped = [project(row, query.select) for row in updated] if wants_body else []
        if count == 0 and config.zero_match_404:
            raise ApiError(
                404,
                "PGRST116",
                "No conversation matched the filters",
                details="The result contains 0 rows",
            )
        write.ids_updated = ids
        write.committed = True
        headers = prefer.applied_headers(write=True)
        if not config.drop_content_range:
            total = str(count) if prefer.count_exact else "*"
            span = f"0-{count - 1}/{total}" if count else f"*/{total}"
            headers.append((b"content-range", span.encode()))
        if not wants_body:
            return _Response(204, headers, None)
        payload: Any
        if single:
            payload = shaped[0]
        elif config.object_response == "one" and count == 1:
            payload = shaped[0]
        elif config.object_response == "first":
            payload = shaped[0] if shaped else None
        else:
            payload = shaped
        content_type = (
            OBJECT_MEDIA_TYPE.encode() + b"; charset=utf-8"
            if single and not config.force_single_object
            else _JSON
        )
        headers.append((b"content-type", content_type))
        return _Response(200, headers, _dumps(payload))

    # --- GET -----------------------------------------------------------------------------

    def _get(self, scope: Scope, config: SandboxConfig) -> _Response:
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = parse_query(pairs, default_order=False)
        prefer = _Preferences(scope["headers"], config)
        single = config.force_single_object or _wants_object(scope["headers"])
        start = query.offset
        stop = start + query.limit if query.limit is not None else None
        requested_range = _header(scope["headers"], b"range")
        if requested_range is not None:
            range_start, range_stop = _parse_range(requested_range)
            start = max(start, range_start)
            if range_stop is not None:
                stop = range_stop if stop is None else min(stop, range_stop)
        if stop is None or stop - start > config.max_rows:
            stop = start + config.max_rows
        stop = max(stop, start)
        with self.state.lock:
            matched = self.state.match(query)
            total = len(matched)
            if not query.order:
                # Without ?order= PostgREST adds no ORDER BY, and PostgreSQL then promises no
                # order: each read gets an order of its own, so a client paging by offset
                # without order=id skips and repeats rows here as it can in production. The
                # first `stop` rows of a random order are a sample of that many, drawn in order.
                chosen = self._row_order_rng.sample(matched, min(stop, total))[start:]
            elif query.order == ID_ORDER:
                chosen = matched[start:stop]
            else:
                chosen = sort_rows(matched, query.order)[start:stop]
            page = [project(row, query.select) for row in chosen]
        if single and len(page) != 1:
            raise ApiError(
                406,
                "PGRST116",
                "Cannot coerce the result to a single JSON object",
                details=f"The result contains {len(page)} rows",
            )
        total_text = str(total) if prefer.count_exact else "*"
        if prefer.count_exact and start > 0 and start >= total:
            raise ApiError(
                416,
                "PGRST103",
                "Requested range not satisfiable",
                details=f"An offset of {start} was requested, but there are only {total} rows.",
            )
        headers = prefer.applied_headers()
        if not config.drop_content_range:
            span = f"{start}-{start + len(page) - 1}/{total_text}" if page else f"*/{total_text}"
            headers.append((b"content-range", span.encode()))
        status = 200
        if prefer.count_exact and page and (start != 0 or start + len(page) < total):
            status = 206
        if single:
            content_type = OBJECT_MEDIA_TYPE.encode() + b"; charset=utf-8"
            if config.force_single_object:
                content_type = _JSON
            headers.append((b"content-type", content_type))
            return _Response(status, headers, _dumps(page[0]))
        headers.append((b"content-type", _JSON))
        return _Response(status, headers, _dumps(page))

    # --- introspection -----------------------------------------------------------------------

    async def _introspect(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (scope["method"], scope["path"].rstrip("/"))
        state = self.state
        status = 200
        payload: Any
        if route == ("GET", "/_sandbox/rows"):
            payload = state.rows()
        elif route == ("GET", "/_sandbox/stats"):
            payload = state.stats()
        elif route == ("GET", "/_sandbox/config"):
            payload = self.config.to_dict()
        elif route == ("POST", "/_sandbox/config"):
            try:
                changes = json.loads(await _read_body(receive) or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("send a JSON object of switch names and values")
                payload = self.configure(**changes).to_dict()
            except ValueError as error:
                status, payload = 400, {"error": str(error)}
            except _Disconnected:
                return
        elif route == ("POST", "/_sandbox/reset-stats"):
            state.reset_stats()
            payload = {"ok": True}
        elif route == ("POST", "/_sandbox/advance-day"):
            state.advance_day()
            payload = {"ok": True}
        else:
            status, payload = 404, {"error": f"no such sandbox route: {route[0]} {route[1]}"}
        await _send(send, status, [(b"content-type", _JSON)], _dumps(payload))


# --- helpers ----------------------------------------------------------------------------------


class _Preferences:
    """The Prefer header as PostgREST reads it (or as if absent, when the proxy drops it)."""

    __slots__ = (
        "representation",
        "minimal",
        "count_exact",
        "strict",
        "max_affected",
        "missing",
    )

    def __init__(self, headers: list[Header], config: SandboxConfig) -> None:
        self.representation = False
        self.minimal = False
        self.count_exact = False
        self.strict = False
        #: How a PATCH with ?columns= fills a named column its body lacks: "null" or "default".
        self.missing: str | None = None
        self.max_affected: int | None = None
        if config.drop_prefer:
            return
        tokens = [
            token.strip()
            for name, value in headers
            if name == b"prefer"
            for token in value.decode("latin-1").split(",")
            if token.strip()
        ]
        invalid = []
        max_affected: int | None = None
        for token in tokens:
            if token == "return=representation":
                self.representation = True
            elif token == "return=minimal":
                self.minimal = True
            elif token == "count=exact":
                self.count_exact = True
            elif token == "handling=strict":
                self.strict = True
            elif token in ("missing=default", "missing=null"):
                self.missing = token[8:]
            elif token.startswith("max-affected=") and token[13:].isdigit():
                max_affected = int(token[13:])
            elif token in (
                "handling=lenient",
                "return=headers-only",
                "count=planned",
                "count=estimated",
                "tx=commit",
                "tx=rollback",
            ):
                continue
            else:
                invalid.append(token)
        if self.strict and invalid:
            raise ApiError(
                400,
                "PGRST122",
                "Invalid preferences given with handling=strict",
                details=f"Invalid preferences: {', '.join(invalid)}",
            )
        if self.strict:
            # max-affected only binds together with handling=strict (PostgREST >= 12.2).
            self.max_affected = max_affected

    @property
    def missing_default(self) -> bool:
        return self.missing == "default"

    def applied_headers(self, *, write: bool = False) -> list[Header]:
        applied = []
        if write and self.missing is not None:
            # PostgREST names the applied missing= before return=, and only on a write.
            applied.append(f"missing={self.missing}")
        if self.representation:
            applied.append("return=representation")
        elif self.minimal:
            applied.append("return=minimal")
        if self.count_exact:
            applied.append("count=exact")
        if self.strict:
            applied.append("handling=strict")
        if self.max_affected is not None:
            applied.append(f"max-affected={self.max_affected}")
        if not applied:
            return []
        return [(b"preference-applied", ", ".join(applied).encode())]


def _header(headers: list[Header], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _wants_object(headers: list[Header]) -> bool:
    accept = _header(headers, b"accept")
    return accept is not None and OBJECT_MEDIA_TYPE.encode() in accept


def _check_token(authorization: bytes | None, token: str) -> ApiError | None:
    hint = "Send the header 'Authorization: Bearer <API key>'."
    if authorization is None:
        return ApiError(401, "UNAUTHORIZED", "API key missing", hint=hint)
    scheme, _, given = authorization.strip().partition(b" ")
    given = given.strip()
    if scheme.lower() != b"bearer" or not given:
        return ApiError(401, "UNAUTHORIZED", "API key missing", hint=hint)
    if not hmac.compare_digest(given, token.encode()):
        return ApiError(
            403, "FORBIDDEN", "API key invalid", hint="Check the API key in Mateo's settings."
        )
    return None


def _parse_range(value: bytes) -> tuple[int, int | None]:
    text = value.decode("latin-1").strip()
    if text.startswith("items="):
        text = text[6:]
    first, dash, last = text.partition("-")
    if not dash or not first.isdigit() or (last and not last.isdigit()):
        return 0, None
    start = int(first)
    if last and int(last) < start:
        raise ApiError(
            416,
            "PGRST103",
            "Requested range not satisfiable",
            details="The lower boundary must be lower than or equal to the upper "
            "boundary in the Range header.",
        )
    return start, (int(last) + 1 if last else None)


def _parse_changes(
    body: bytes,
    config: SandboxConfig,
    columns: tuple[str, ...] | None = None,
    *,
    missing_default: bool = False,
) -> dict[str, Any]:
    """The columns a PATCH sets, checked as PostgREST and PostgreSQL check them.

    Without `columns` the body's keys are the columns set. With `?columns=` those names are:
    PostgREST reads only them from the body (json_to_recordset), so other keys are ignored
    unchecked, and a named column the body lacks is set to NULL, or to its default with
    `Prefer: missing=default`.
    """
    try:
        document = json.loads(body) if body.strip() else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ApiError(
            400,
            "PGRST102",
            "Empty or invalid json",
            hint='Send a JSON object such as {"status": "closed"}.',
        )
    if config.default_status_open and "status" not in document:
        # The proxy adds the key to the body; with ?columns= PostgREST may still ignore it.
        document["status"] = schema.WRITABLE_DEFAULTS["status"]
    for key in document if columns is None else columns:
        if key not in schema.WRITABLE_COLUMNS:
            raise ApiError(
                400,
                "PGRST204",
                f"Could not find the '{key}' column of '{schema.TABLE}' in the schema cache",
            )
    if columns is not None:
        default = schema.WRITABLE_DEFAULTS if missing_default else {}
        document = {
            column: document[column] if column in document else default.get(column)
            for column in columns
        }
    changes: dict[str, Any] = {}
    for key, value in document.items():
        if value is None:
            if key in schema.NOT_NULL_COLUMNS:
                raise ApiError(
                    400,
                    "23502",
                    f'null value in column "{key}" of relation '
                    f'"{schema.TABLE}" violates not-null constraint',
                )
            changes[key] = None
        elif key == "status":
            changes[key] = schema.parse_enum(
                "status", value if isinstance(value, str) else json.dumps(value)
            )
        elif isinstance(value, str):
            changes[key] = schema.parse_uuid(value)
        else:
            schema.parse_uuid(json.dumps(value))
    return changes


def _check_foreign_keys(
    changes: dict[str, Any], inboxes: frozenset[str], agents: frozenset[str]
) -> None:
    for column, known, table in (("inbox_id", inboxes, "inbox"), ("assignee_id", agents, "agent")):
        value = changes.get(column)
        if value is not None and value not in known:
            raise ApiError(
                409,
                "23503",
                f'insert or update on table "{schema.TABLE}" violates foreign key constraint '
                f'"{schema.TABLE}_{column}_fkey"',
                details=f'Key ({column})=({value}) is not present in table "{table}".',
            )


def _error_response(error: ApiError, style: str, extra: list[Header] | None = None) -> _Response:
    headers = [(b"content-type", _JSON)]
    headers.extend(error.headers)
    if extra:
        headers.extend(extra)
    return _Response(error.status, headers, error.body(style))


def _fault_response(kind: str, config: SandboxConfig, limit_headers: list[Header]) -> _Response:
    if kind == "502":
        return _Response(502, [(b"content-type", _HTML), *limit_headers], gateway_page(502))
    if kind == "503":
        error = ApiError(
            503,
            "PGRST001",
            "Database client error. Retrying the connection.",
            headers=[(b"retry-after", str(config.fault_503_retry_after).encode())],
        )
        return _error_response(error, config.error_body, limit_headers)
    error = ApiError(500, "XX000", "Internal server error (injected fault)")
    return _error_response(error, config.error_body, limit_headers)


def _reset_response(config: SandboxConfig) -> _Response:
    error = ApiError(
        503, "SANDBOX_RESET", "The sandbox was reset while this request waited; nothing was changed"
    )
    return _error_response(error, config.error_body)


def _cutoff_response(config: SandboxConfig, limit_headers: list[Header]) -> _Response:
    if config.cutoff_body == "html":
        return _Response(
            config.cutoff_status,
            [(b"content-type", _HTML), *limit_headers],
            gateway_page(config.cutoff_status),
        )
    error = ApiError(
        config.cutoff_status,
        "57014",
        "canceling statement due to statement timeout",
        hint=f"Requests are cut off after {config.cutoff_seconds:g} seconds.",
    )
    return _error_response(error, config.error_body, limit_headers)


def _server_port(scope: Scope) -> int:
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else 80


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, headers: list[Header], body: bytes | None) -> None:
    if body is not None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body or b""})


def _cut_short(response: _Response) -> _Response:
    """The answer a dropped connection starts, with a body to break off half way.

    An answer without a body (204) becomes a 200 announcing one.
    """
    body = response.body
    if body and len(body) >= 2:
        return response
    headers = [h for h in response.headers if h[0] != b"content-type"]
    headers.append((b"content-type", _JSON))
    return _Response(200, headers, b'[{"id":"' + b" " * 64)


async def _send_partial(send: Send, response: _Response) -> None:
    """Start the answer, send half its body, then give up: the client sees a broken read."""
    body = response.body or b""
    headers = [*response.headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    # Returning now leaves the response incomplete; uvicorn closes the connection.
