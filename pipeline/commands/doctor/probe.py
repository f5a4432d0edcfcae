"""Doctor's requests: harmless by construction, paced and counted, each answer kept."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

import httpx

from pipeline.api.client import SELECT, _error_details
from pipeline.api.quota import QuotaExhausted, QuotaLedger
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.api.wire import exchange, make_transport
from pipeline.commands.doctor.observation import (
    RATE_LIMIT_HEADERS,
    Observation,
    filter_accepted,
    retry_after_from,
)
from pipeline.core.errors import ConnectionSetupError, RunStopped, TransientError
from pipeline.core.models import ConversationIds

#: Doctor must stay cheap: it shares the account's 10,000 requests a day with real runs.
MAX_REQUESTS = 19
#: `in.(…)` list lengths tried after a 2-id list passed: up while they pass, down if 50 fails.
_LENGTHS_UP = (50, 100, 200)
_LENGTHS_DOWN = (20, 10, 5)
#: Matches nothing, so it changes nothing; a valid value, so only the filter is being tested.
_HARMLESS_BODY = {"status": "open"}
#: Not a status: the server must refuse it (400 22P02) before looking for rows.
_INVALID_BODY = {"status": "doctor-check"}
_ATTEMPTS = 3
#: The headers doctor keeps from each answer.
_KEPT_HEADERS = (*RATE_LIMIT_HEADERS, "content-range", "preference-applied", "content-type")


class DoctorStopped(Exception):
    """Doctor cannot go on (token refused, rate limited for long, server unreachable)."""


class Probe:
    """Sends doctor's requests, paced and counted, and keeps what came back."""

    def __init__(
        self,
        base_url: str,
        token: str,
        transport: httpx.AsyncBaseTransport | None,
        rate: float | None,
        max_wait: float,
        timeout: float,
        ledger: QuotaLedger | None = None,
    ) -> None:
        self._endpoint = base_url + "/conversation"
        self._token = token
        self._timeout = timeout
        self._path = RequestPath(
            None,
            RunControl(),
            rate=rate,
            max_attempts=_ATTEMPTS,
            ledger=ledger,
            max_wait=max_wait,
        )
        self._http = httpx.AsyncClient(
            transport=transport or make_transport("httpx", 1),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, pool=None),
            follow_redirects=False,
            trust_env=False,
        )
        self.requests = 0
        self.observations: list[Observation] = []
        self.rate_limited: list[Observation] = []
        self.token_valid = False

    async def __aenter__(self) -> Probe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def ask_everything(self) -> None:
        read = await self.send("token check", "GET", f"{self._endpoint}?select=id&limit=1")
        if read.http_status in (401, 403):
            raise DoctorStopped(
                f"the API answered {read.http_status}: the token is "
                f"{'missing' if read.http_status == 401 else 'not valid'}. Set MATEO_API_TOKEN "
                "or --token-file to a valid token and run doctor again"
            )
        # 406: a proxy forcing single objects refuses a read of 0 rows; the token passed.
        if read.http_status not in (200, 206, 406) or read.body_shape == "html":
            raise DoctorStopped(
                f"the API answered {read.http_status} ({read.body_shape}) to a plain read of "
                "conversations: check --base-url (it should end in /api/v1)"
            )
        self.token_valid = True
        await self.read("read of 2 ids", 2)
        await self.patch("zero match, Prefer and select", 1, prefer=True)
        await self.patch("zero match, select only", 1, prefer=False)
        if filter_accepted(await self.patch("in. with 2 ids", 2)):
            await self._measure_in_lists()
        await self.patch("invalid status", 1, body=_INVALID_BODY)

    async def _measure_in_lists(self) -> None:
        """Longer and longer `in.` lists while they pass; shorter ones if the first fails."""
        first = await self.patch(f"in. with {_LENGTHS_UP[0]} ids", _LENGTHS_UP[0])
        if filter_accepted(first):
            for count in _LENGTHS_UP[1:]:
                if not filter_accepted(await self.patch(f"in. with {count} ids", count)):
                    return
            return
        for count in _LENGTHS_DOWN:
            if filter_accepted(await self.patch(f"in. with {count} ids", count)):
                return

    async def read(self, purpose: str, count: int) -> Observation:
        """A read as mateo-bulk sends it (`MateoClient.read`), of random ids no row has."""
        ids = ConversationIds(str(uuid.uuid4()) for _ in range(count))
        url = f"{self._endpoint}?id={ids.filter_value()}&select={SELECT}&order=id.asc&limit=50"
        return await self.send(purpose, "GET", url, ids=ids, headers={"Prefer": "count=exact"})

    async def patch(
        self,
        purpose: str,
        count: int,
        *,
        prefer: bool = True,
        body: Mapping[str, str] = _HARMLESS_BODY,
    ) -> Observation:
        # Fresh random uuids each time: no conversation has them, so the PATCH matches nothing.
        ids = ConversationIds(str(uuid.uuid4()) for _ in range(count))
        url = f"{self._endpoint}?id={ids.filter_value()}&select={SELECT}"
        headers = {"Content-Type": "application/json"}
        if prefer:
            headers["Prefer"] = "return=representation"
        return await self.send(
            purpose, "PATCH", url, ids=ids, headers=headers, content=json.dumps(body).encode()
        )

    async def send(
        self,
        purpose: str,
        method: str,
        url: str,
        *,
        ids: ConversationIds | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> Observation:
        """Send one request through the request path: paced, budgeted, 429s and 5xx retried."""
        last: list[Observation] = []

        async def attempt() -> Observation:
            if self.requests >= MAX_REQUESTS:
                raise DoctorStopped(
                    f"{MAX_REQUESTS} requests spent, mostly on retries: the API is busy or "
                    "failing; run doctor again later"
                )
            self.requests += 1
            observation = await self._exchange(purpose, method, url, ids, headers, content)
            status = observation.http_status
            if status == 429:
                self.rate_limited.append(observation)
            if status == 429 or status >= 500:
                last[:] = [observation]
                raise TransientError(
                    f"answered {status}",
                    http_status=status,
                    retry_after=retry_after_from(observation.headers),
                )
            return observation

        try:
            observation = await self._path.call(attempt)
        except RunStopped as error:
            reason = self._path.control.stop_reason or error
            if isinstance(reason, QuotaExhausted) and reason.resets_at is None:
                # The API's own limit (a long Retry-After, ratelimit-remaining: 0), not the
                # budget this machine keeps.
                raise DoctorStopped(
                    f"rate limited: {reason} (is the day's quota spent?); run doctor again "
                    "after that"
                ) from None
            raise DoctorStopped(str(reason)) from None
        except TransientError as error:
            if error.http_status == 429:
                raise DoctorStopped(
                    "rate limited on every attempt; run doctor again later"
                ) from None
            if not last:
                raise DoctorStopped(
                    f"no answer from the API: {error}; check --base-url and the network, then "
                    "run doctor again"
                ) from None
            observation = last[0]  # a 5xx on every attempt is an answer too: keep it
        self.observations.append(observation)
        return observation

    async def _exchange(
        self,
        purpose: str,
        method: str,
        url: str,
        ids: ConversationIds | None,
        headers: Mapping[str, str] | None,
        content: bytes | None,
    ) -> Observation:
        request = self._http.build_request(method, url, headers=headers, content=content)
        try:
            response, body = await exchange(
                self._http,
                request,
                ids=ids,
                timeout=self._timeout,
                redact=lambda text: text.replace(self._token, "***"),
            )
        except ConnectionSetupError as error:
            raise DoctorStopped(f"{error}; check --base-url, then run doctor again") from None
        return _observe(purpose, method, len(ids) if ids else 0, request, response, body)


def _observe(
    purpose: str,
    method: str,
    ids: int,
    request: httpx.Request,
    response: httpx.Response,
    body: bytes,
) -> Observation:
    headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
    shape = _body_shape(body)
    code: str | None = None
    keys: tuple[str, ...] = ()
    if response.status_code >= 400:
        code, _ = _error_details(body, lambda text: text)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            keys = tuple(sorted(parsed))
    return Observation(
        purpose=purpose,
        method=method,
        ids=ids,
        url_length=len(request.url.raw_path),
        http_status=response.status_code,
        headers=headers,
        body_shape=shape,
        error_code=code,
        error_keys=keys,
    )


def _body_shape(body: bytes) -> str:
    text = body.strip()
    if not text:
        return "empty"
    if text.startswith(b"<"):
        return "html"
    try:
        data = json.loads(text)
    except ValueError:
        return "not JSON"
    if data is None:
        return "null"
    if isinstance(data, list):
        return "array" if data else "empty array"
    if isinstance(data, dict):
        return "object"
    return "not JSON"
