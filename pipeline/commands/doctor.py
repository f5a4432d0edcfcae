"""`mateo-bulk doctor`: ask the account what Mateo's docs leave open, without changing anything.

`docs/api.md` lists what is not known about Mateo's proxy: the shape of a PATCH answer,
whether `select` or `Prefer` bring a body, whether `id=in.(…)` is accepted and how long it may
be, whether a single-object answer is forced, whether a read of several ids comes back with
`count=exact`'s total, the rate-limit headers, the error body. The client copes with every
answer; doctor finds out which one this account gives, so a user can check before a big run and
the runner can start from the right batch size.

Every request doctor sends is harmless by construction: GETs, and PATCHes whose id filter names
fresh random uuids (built through `ConversationIds`, like every PATCH of mateo-bulk) that no
conversation has. A PATCH that matches nothing changes nothing, whatever its body says.

Each verdict says two things apart: whether the answer is `documented` (what Mateo's docs or
plain PostgREST promise for that question; each judge says which) and whether mateo-bulk
`copes` with it (works correctly, perhaps at a cost in requests). A finding the user should act
on (a refused token, an answer mateo-bulk does not know, one row per request) is
`action_needed`, with a `to_do`, and makes doctor exit 1.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pipeline.api.account import store_answers
from pipeline.api.client import SELECT, _error_details, _parse_seconds, _retry_after
from pipeline.api.quota import QuotaExhausted, QuotaLedger
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.api.wire import check_base_url, exchange, make_transport
from pipeline.core.errors import ConnectionSetupError, InputError, RunStopped, TransientError
from pipeline.core.models import ConversationIds

#: Doctor must stay cheap: it shares the account's 10,000 requests a day with real runs.
MAX_REQUESTS = 19
#: `in.(…)` list lengths tried after a 2-id list passed: up while they pass, down if 50 fails.
_LENGTHS_UP = (50, 100, 200)
_LENGTHS_DOWN = (20, 10, 5)
#: The most ids mateo-bulk puts in one PATCH, whatever the server accepts (`--batch-size`).
MAX_BATCH_SIZE = 100
DEFAULT_BATCH_SIZE = 50
#: Matches nothing, so it changes nothing; a valid value, so only the filter is being tested.
_HARMLESS_BODY = {"status": "open"}
#: Not a status: the server must refuse it (400 22P02) before looking for rows.
_INVALID_BODY = {"status": "doctor-check"}
_ATTEMPTS = 3
_RATE_LIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after")
#: The headers doctor keeps from each answer.
_KEPT_HEADERS = (*_RATE_LIMIT_HEADERS, "content-range", "preference-applied", "content-type")
#: 2: verdicts carry documented/copes/action_needed instead of one `ok`; `answers` is unchanged,
#: so a file of format 1 is still read.
_FORMAT = 2
#: Exit codes: every answer handled as is; a finding needs the user's action; stopped early.
EXIT_OK = 0
EXIT_ACTION_NEEDED = 1
EXIT_STOPPED = 3
LEGEND = (
    ("ok", "as documented, and mateo-bulk handles it"),
    ("~~", "not as documented (or not seen to be); mateo-bulk handles it, perhaps at a cost"),
    ("!!", 'needs your action: see "What to do" at the end'),
)
NOTHING_TO_DO = "nothing: mateo-bulk handles every answer seen"


@dataclass(frozen=True, slots=True)
class Observation:
    """One request doctor sent and what came back (never the token, never row data)."""

    purpose: str
    method: str
    #: How many ids the filter named (0 for the GET).
    ids: int
    #: Bytes of the request target (path and query), what a proxy's URL limit measures.
    url_length: int
    http_status: int
    headers: Mapping[str, str]
    #: "array", "empty array", "object", "null", "empty", "html" or "not JSON".
    body_shape: str
    error_code: str | None = None
    #: The keys of a JSON error body, sorted.
    error_keys: tuple[str, ...] = ()

    @property
    def ratelimit_remaining(self) -> int | None:
        value = self.headers.get("ratelimit-remaining", "")
        return int(value) if value.strip().isdigit() else None

    @property
    def ratelimit_reset(self) -> float | None:
        value = self.headers.get("ratelimit-reset")
        return None if value is None else _parse_seconds(value)

    @property
    def has_body(self) -> bool:
        return self.body_shape != "empty"

    def summary(self) -> str:
        parts = [f"{self.http_status}", f"body {self.body_shape}"]
        if self.error_code:
            parts.append(f"code {self.error_code}")
        if "content-range" in self.headers:
            parts.append(f"Content-Range {self.headers['content-range']}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One question, what was observed, whether the docs promise it, and what mateo-bulk does."""

    key: str
    question: str
    observed: str
    #: What Mateo's docs or plain PostgREST promise for this question.
    docs: str
    #: The answer is what `docs` promises; None when the answers seen cannot tell.
    documented: bool | None
    #: mateo-bulk works correctly under this answer (perhaps at a cost); None when not asked.
    copes: bool | None
    #: What mateo-bulk does with the answer.
    action: str
    #: The user should do something about it: `to_do` says what.
    action_needed: bool = False
    to_do: str | None = None

    def __post_init__(self) -> None:
        if self.action_needed != bool(self.to_do):
            raise ValueError(f"{self.key}: action_needed and to_do disagree")
        if self.copes is False and not self.action_needed:
            raise ValueError(f"{self.key}: an answer mateo-bulk cannot cope with needs action")

    @property
    def mark(self) -> str:
        """The mark printed before the question: ok, ~~ or !! (see `LEGEND`)."""
        if self.action_needed:
            return "!!"
        return "ok" if self.documented is True and self.copes is True else "~~"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mark": self.mark}


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """Everything one `doctor` run found out; `answers` is what later runs read."""

    base_url: str
    checked_at: str
    token_valid: bool
    verdicts: tuple[Verdict, ...]
    #: Machine-readable answers (see `_answers`), stored per account for the runner.
    answers: Mapping[str, Any]
    #: Requests sent, retries included.
    requests: int
    observations: tuple[Observation, ...] = ()
    #: Why doctor stopped before asking everything (bad token, rate limit, server down).
    stopped: str | None = None
    answers_file: str | None = field(default=None)

    @property
    def exit_code(self) -> int:
        """3 when doctor stopped early, 1 when a finding needs action, else 0."""
        if self.stopped:
            return EXIT_STOPPED
        if any(verdict.action_needed for verdict in self.verdicts):
            return EXIT_ACTION_NEEDED
        return EXIT_OK

    @property
    def to_do(self) -> list[str]:
        """What the user should do, once each, in the order of the questions."""
        items: list[str] = []
        token = next((verdict for verdict in self.verdicts if verdict.key == "token"), None)
        if self.stopped and not (token and token.to_do):
            # The token verdict says why when doctor stopped there; otherwise the reason leads.
            items.append(f"doctor stopped early: {self.stopped}")
        for verdict in self.verdicts:
            if verdict.to_do and verdict.to_do not in items:
                items.append(verdict.to_do)
        return items

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (the `--json` output)."""
        return {
            "base_url": self.base_url,
            "checked_at": self.checked_at,
            "token_valid": self.token_valid,
            "requests": self.requests,
            "stopped": self.stopped,
            "exit_code": self.exit_code,
            "legend": dict(LEGEND),
            "verdicts": [verdict.to_dict() for verdict in self.verdicts],
            "to_do": self.to_do,
            "answers": dict(self.answers),
            "observations": [
                {**asdict(observation), "headers": dict(observation.headers)}
                for observation in self.observations
            ],
            "answers_file": self.answers_file,
        }


class _Stop(Exception):
    """Doctor cannot go on (token refused, rate limited for long, server unreachable)."""


async def diagnose(
    base_url: str,
    token: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rate: float | None = 2.0,
    max_wait: float = 60.0,
    timeout: float = 10.0,
    save: bool = True,
) -> DoctorReport:
    """Ask the API at `base_url` the open questions, harmlessly.

    `rate` is requests per second (Mateo allows 2); a 429 asking to wait more than `max_wait`
    seconds stops doctor instead of waiting. With `save` (an account's API, not a throwaway
    sandbox) the requests are counted in the account's daily ledger, shared with runs, and the
    answers are stored for later runs. Raises InputError for a missing token or bad URL.
    """
    base_url = check_base_url(base_url)
    token = token.strip()
    if not token:
        raise InputError("no API token: set MATEO_API_TOKEN or pass --token-file")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise InputError("the API token holds characters an HTTP header cannot carry")
    ledger = QuotaLedger(token) if save else None
    probe = _Probe(base_url, token, transport, rate, max_wait, timeout, ledger)
    stopped: str | None = None
    try:
        async with probe:
            try:
                await probe.ask_everything()
            except _Stop as stop:
                stopped = str(stop)
    finally:
        if ledger is not None:
            ledger.close()
    report = _report(probe, base_url, stopped)
    if save and report.token_valid and not stopped:
        path = save_answers(report, token)
        report = DoctorReport(**{**_fields(report), "answers_file": str(path)})
    return report


def save_answers(report: DoctorReport, token: str) -> Path:
    """Write the report's answers for later runs of this account; the token is never written."""
    document = {
        "format": _FORMAT,
        "base_url": report.base_url,
        "checked_at": report.checked_at,
        "requests": report.requests,
        "answers": dict(report.answers),
        "verdicts": [verdict.to_dict() for verdict in report.verdicts],
    }
    return store_answers(token, document)


def report_text(report: DoctorReport) -> str:
    """The legend, one short block per question, and what to do, as plain text."""
    lines = [f"mateo-bulk doctor: {report.base_url} at {report.checked_at}", ""]
    for number, (mark, meaning) in enumerate(LEGEND):
        lines.append(f"{'legend:' if number == 0 else '':<8}[{mark}] {meaning}")
    lines.append("")
    docs = {True: "as documented", False: "not as documented", None: "could not tell"}
    copes = {True: "copes", False: "does NOT cope", None: "not known"}
    for verdict in report.verdicts:
        lines.append(f"[{verdict.mark}] {verdict.question}")
        lines.append(f"     observed:   {verdict.observed}")
        lines.append(f"     docs:       {docs[verdict.documented]} ({verdict.docs})")
        lines.append(f"     mateo-bulk: {copes[verdict.copes]}: {verdict.action}")
        if verdict.to_do:
            lines.append(f"     to do:      {verdict.to_do}")
    lines.append("")
    lines.append(
        f"{report.requests} requests sent; only random ids no conversation has, so nothing "
        "was changed."
    )
    if report.answers_file:
        lines.append(f"answers saved to {report.answers_file}")
    lines.append("")
    to_do = report.to_do
    if not to_do:
        lines.append(f"What to do: {NOTHING_TO_DO}.")
    else:
        lines.append(f"What to do (exit code {report.exit_code}):")
        lines.extend(f"  {number}. {item}" for number, item in enumerate(to_do, 1))
    return "\n".join(lines)


# --- asking -------------------------------------------------------------------------------------


class _Probe:
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

    async def __aenter__(self) -> _Probe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def ask_everything(self) -> None:
        read = await self.send("token check", "GET", f"{self._endpoint}?select=id&limit=1")
        if read.http_status in (401, 403):
            raise _Stop(
                f"the API answered {read.http_status}: the token is "
                f"{'missing' if read.http_status == 401 else 'not valid'}. Set MATEO_API_TOKEN "
                "or --token-file to a valid token and run doctor again"
            )
        # 406: a proxy forcing single objects refuses a read of 0 rows; the token passed.
        if read.http_status not in (200, 206, 406) or read.body_shape == "html":
            raise _Stop(
                f"the API answered {read.http_status} ({read.body_shape}) to a plain read of "
                "conversations: check --base-url (it should end in /api/v1)"
            )
        self.token_valid = True
        await self.read("read of 2 ids", 2)
        await self.patch("zero match, Prefer and select", 1, prefer=True)
        await self.patch("zero match, select only", 1, prefer=False)
        if _filter_accepted(await self.patch("in. with 2 ids", 2)):
            await self._measure_in_lists()
        await self.patch("invalid status", 1, body=_INVALID_BODY)

    async def _measure_in_lists(self) -> None:
        """Longer and longer `in.` lists while they pass; shorter ones if the first fails."""
        first = await self.patch(f"in. with {_LENGTHS_UP[0]} ids", _LENGTHS_UP[0])
        if _filter_accepted(first):
            for count in _LENGTHS_UP[1:]:
                if not _filter_accepted(await self.patch(f"in. with {count} ids", count)):
                    return
            return
        for count in _LENGTHS_DOWN:
            if _filter_accepted(await self.patch(f"in. with {count} ids", count)):
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
                raise _Stop(
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
                    retry_after=_retry_after_from(observation.headers),
                )
            return observation

        try:
            observation = await self._path.call(attempt)
        except RunStopped as error:
            reason = self._path.control.stop_reason or error
            if isinstance(reason, QuotaExhausted) and reason.resets_at is None:
                # The API's own limit (a long Retry-After, ratelimit-remaining: 0), not the
                # budget this machine keeps.
                raise _Stop(
                    f"rate limited: {reason} (is the day's quota spent?); run doctor again "
                    "after that"
                ) from None
            raise _Stop(str(reason)) from None
        except TransientError as error:
            if error.http_status == 429:
                raise _Stop("rate limited on every attempt; run doctor again later") from None
            if not last:
                raise _Stop(
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
            raise _Stop(f"{error}; check --base-url, then run doctor again") from None
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


def _retry_after_from(headers: Mapping[str, str]) -> float | None:
    return _retry_after(httpx.Response(429, headers=dict(headers)), rate_limited=True)


def _means_no_match(observation: Observation) -> bool:
    """A 404 that says "no row matched" (PostgREST before 10.1), not "no such endpoint"."""
    return (
        observation.http_status == 404
        and observation.error_code != "PGRST205"
        and observation.body_shape != "html"
    )


def _filter_accepted(observation: Observation) -> bool:
    return observation.http_status in (200, 204) or _means_no_match(observation)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds:g} s"


# --- judging ------------------------------------------------------------------------------------

#: What a read decides for a row a PATCH's answer does not name (`outcomes.judge_unnamed`).
_READ_DECIDES = (
    "the rows an answer does not name are read back and the read decides: not_found only when "
    "the row does not exist, conflict when it no longer matched its guard, unchanged when it "
    "already held its target (updated when an earlier attempt's answer was lost)"
)
_SUCCESS_SHAPE_UNSEEN = (
    "Whether a one-row success comes as an array or one object cannot be seen without changing "
    "a row; both are handled"
)
#: What one row per request costs (a snapshot GET and a PATCH per row), for the user to plan.
_ONE_ROW_PER_REQUEST = (
    "expect about two requests per row (a GET for the snapshot, then the PATCH): a day's "
    "10,000 requests change about 5,000 rows, so split larger changes over days "
    "(--max-requests, --wait)"
)
_UNKNOWN_TO_DO = "show this answer to Mateo's support, and start no large run until it is explained"
_WRONG_ENDPOINT_TO_DO = (
    "check --base-url (it should end in /api/v1) and that the proxy passes this request on to "
    "/conversation; every run stops at such an answer"
)
_WRONG_ENDPOINT = (
    "a 404 with an HTML page or PGRST205 means no such endpoint (a wrong --base-url): a run "
    "stops at it (exit 3, resumable, nothing changed), never reports rows not_found"
)


def _fields(report: DoctorReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in DoctorReport.__dataclass_fields__}


def _report(probe: _Probe, base_url: str, stopped: str | None) -> DoctorReport:
    found = {observation.purpose: observation for observation in probe.observations}
    not_asked = "run doctor again once the cause is fixed: it stopped before asking this"
    token = _token_verdict(
        found.get("token check"),
        probe.token_valid,
        f"doctor stopped early: {stopped}" if stopped else "run doctor again",
    )
    verdicts = [_verdict("token", "Is the token valid?", _TOKEN_DOCS, token)]
    answers: dict[str, Any] = {"token_valid": probe.token_valid}
    if probe.token_valid:
        for key, question, docs, judge in _QUESTIONS:
            try:
                judgement = judge(found, probe.rate_limited, answers)
            except KeyError:
                # Doctor stopped before sending the request this question needs.
                judgement = _Judgement(
                    "not asked: doctor stopped early",
                    None,
                    "nothing was learnt",
                    copes=None,
                    to_do=not_asked,
                )
            verdicts.append(_verdict(key, question, docs, judgement))
    return DoctorReport(
        base_url=base_url,
        checked_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        token_valid=probe.token_valid,
        verdicts=tuple(verdicts),
        answers=answers,
        requests=probe.requests,
        observations=tuple(probe.observations),
        stopped=stopped,
    )


Found = Mapping[str, Observation]


@dataclass(frozen=True, slots=True)
class _Judgement:
    observed: str
    #: The answer is what the question's docs promise (None: the answers cannot tell).
    documented: bool | None
    action: str
    copes: bool | None = True
    #: Set when the user should act: a refused token, an unknown answer, one row per request.
    to_do: str | None = None


def _verdict(key: str, question: str, docs: str, judgement: _Judgement) -> Verdict:
    return Verdict(
        key,
        question,
        judgement.observed,
        docs,
        judgement.documented,
        judgement.copes,
        judgement.action,
        action_needed=judgement.to_do is not None,
        to_do=judgement.to_do,
    )


# Each question's "docs" is what Mateo's documentation (docs.getmateo.com) or, where it is
# silent, plain PostgREST promise for it: the baseline docs/api.md is written against.
_TOKEN_DOCS = "Mateo documents 200 for a valid key, 401 for a missing one, 403 for an invalid one"


def _token_verdict(read: Observation | None, valid: bool, stop: str) -> _Judgement:
    if read is None:
        return _Judgement("no answer", None, "nothing was asked", copes=None, to_do=stop)
    observed = f"GET conversation?select=id&limit=1 answered {read.http_status}"
    if read.http_status not in (401, 403):
        observed += f", body {read.body_shape}"
    if valid:
        documented = read.http_status in (200, 206)
        action = "the token is accepted"
        if not documented:
            action += " (what the 406 means is the single-object question's)"
        return _Judgement(observed, documented, action)
    if read.http_status in (401, 403):
        return _Judgement(
            observed + " (token invalid)",
            True,
            "nothing else was asked: no request of a run can succeed with this token",
            copes=False,
            to_do="set MATEO_API_TOKEN or --token-file to a valid token, then run doctor again",
        )
    return _Judgement(
        observed,
        False,
        "nothing else was asked: this is not the conversation endpoint",
        copes=False,
        to_do="check --base-url (it should end in /api/v1), then run doctor again",
    )


_RATE_LIMIT_DOCS = (
    "Mateo documents ratelimit-limit and ratelimit-remaining on every answer; ratelimit-reset "
    "and Retry-After are not documented"
)


def _rate_limit_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    read = found["token check"]
    seen = {name: read.headers[name] for name in _RATE_LIMIT_HEADERS if name in read.headers}
    answers["ratelimit_headers"] = seen
    # Mateo allows 2 a second and 10,000 a day: a window that resets within a minute is the
    # per-second one; without a reset, the size of the limit tells.
    window = None
    reset = _retry_after_from({"retry-after": seen.get("ratelimit-reset", "")})
    limit = seen.get("ratelimit-limit", "")
    if reset is not None:
        window = "rate" if reset <= 60 else "day"
    elif limit.isdigit():
        window = "day" if int(limit) >= 1000 else "rate"
    answers["ratelimit_window"] = window
    observed = (
        ", ".join(f"{name}: {value}" for name, value in seen.items())
        if seen
        else "none of ratelimit-limit, ratelimit-remaining, ratelimit-reset"
    )
    if window:
        observed += f" (the {'daily quota' if window == 'day' else 'per-second limit'}, it seems)"
    retry_after_on_429: bool | None = None
    if rate_limited:
        last = rate_limited[-1]
        retry_after_on_429 = "retry-after" in last.headers
        answers["reset_on_429"] = "ratelimit-reset" in last.headers
        observed += f"; {len(rate_limited)} answer(s) 429, " + (
            f"Retry-After: {last.headers['retry-after']}"
            if retry_after_on_429
            else "without Retry-After"
        )
    answers["retry_after_on_429"] = retry_after_on_429
    if "ratelimit-remaining" in seen and "ratelimit-reset" in seen:
        action = "ratelimit-remaining and ratelimit-reset steer the pace before any 429"
    else:
        action = (
            "too few headers to steer by: mateo-bulk keeps to --rate (2/s) and counts the "
            "day's requests itself"
        )
    if retry_after_on_429 is False:
        action += "; after a 429 it waits for ratelimit-reset if sent, else backs off and slows"
    elif retry_after_on_429:
        action += "; after a 429 it waits as long as Retry-After says"
    else:
        action += "; no 429 was met, so whether Retry-After comes with one is not known"
    documented = "ratelimit-limit" in seen and "ratelimit-remaining" in seen
    return _Judgement(observed, documented, action)


_ZERO_MATCH_DOCS = (
    "PostgREST >= 10.1: 200 [] with Prefer: return=representation, 204 without it; a 404 is "
    "PostgREST before 10.1, not documented"
)


def _zero_match_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    patch = found["zero match, Prefer and select"]
    answers["zero_match"] = {
        "http_status": patch.http_status,
        "body": patch.body_shape,
        "content_range": patch.headers.get("content-range"),
    }
    observed = f"PATCH id=eq.<random> with Prefer and select: {patch.summary()}"
    success = patch.http_status in (200, 201, 206)
    judgement: _Judgement
    if success and patch.body_shape == "empty array":
        meaning = "empty array"
        judgement = _Judgement(
            observed,
            patch.http_status == 200,
            f"[] names no row, and is never taken as not_found by itself: {_READ_DECIDES}. "
            f"{_SUCCESS_SHAPE_UNSEEN}",
        )
    elif patch.http_status == 204:
        meaning = "no content"
        judgement = _Judgement(
            observed,
            True,
            "204 without a body names no row (whether Prefer is dropped is the next question): "
            f"{_READ_DECIDES}; one extra GET per group of up to 50 rows",
        )
    elif success and patch.body_shape == "null":
        meaning = "object"
        judgement = _Judgement(
            observed,
            False,
            "one object (null for no row), not PostgREST's array: for a PATCH of several ids "
            f"it names one row at most, so it is not taken as evidence; every row of a grouped "
            f"PATCH is read back with GET (one extra request per group of up to 50) and "
            f"{_READ_DECIDES}",
        )
    elif success and patch.body_shape in ("array", "object"):
        # No row has the random id, so no row may be named: an object here is not one of ours.
        meaning = "rows not asked for"
        judgement = _Judgement(
            observed,
            False,
            f"a PATCH of a random id answered with a body ({patch.body_shape}): an answer "
            "naming a row that was not asked for stops every run at once (exit 4), "
            "and an object that is not a conversation fails the rows",
            copes=False,
            to_do=_UNKNOWN_TO_DO,
        )
    elif _means_no_match(patch):
        meaning = "not found 404"
        judgement = _Judgement(
            observed,
            False,
            "404 is read as 'this PATCH changed none of these rows' (PostgREST before 10.1), "
            f"never as not_found by itself: {_READ_DECIDES}. {_SUCCESS_SHAPE_UNSEEN}",
        )
    elif patch.http_status == 404:
        meaning = "no such endpoint"
        judgement = _Judgement(
            observed, False, _WRONG_ENDPOINT, copes=False, to_do=_WRONG_ENDPOINT_TO_DO
        )
    elif patch.http_status == 406:
        meaning = "refused 406"
        judgement = _Judgement(
            observed,
            False,
            "a one-id 406 says the PATCH matched no row and changed nothing; the row is read "
            "back and the read decides (never not_found by itself); see the single-object "
            "question",
        )
    else:
        meaning = "unexpected"
        judgement = _Judgement(
            observed,
            False,
            "not an answer mateo-bulk knows: the rows of such a PATCH would end rejected or "
            "failed, not done",
            copes=False,
            to_do=_UNKNOWN_TO_DO,
        )
    answers["zero_match_means"] = meaning
    return judgement


_PREFER_DOCS = (
    "PostgREST honours Prefer (return=representation brings a body; count=exact a total); "
    "Mateo's recipes get a body from select: a PATCH sending both gets one either way"
)


def _prefer_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    both = found["zero match, Prefer and select"]
    select_only = found["zero match, select only"]
    count_honoured = _count_exact_honoured(found["read of 2 ids"])
    applied_header = both.headers.get("preference-applied")
    observed = (
        f"with Prefer: {both.http_status} body {both.body_shape}, "
        + (f"Preference-Applied: {applied_header}" if applied_header else "no Preference-Applied")
        + f"; select only: {select_only.http_status} body {select_only.body_shape}"
    )
    if count_honoured is not None:
        observed += (
            f"; a read's count=exact {'was' if count_honoured else 'was not'} honoured "
            f"({'a total' if count_honoured else 'no total'} in Content-Range)"
        )
    answerable = all(each.http_status in (200, 204) for each in (both, select_only))
    prefer_forwarded: bool | None = None
    select_alone: bool | None = None
    if answerable:
        applied = "return=representation" in both.headers.get("preference-applied", "")
        select_alone = select_only.has_body
        if applied or (both.has_body and not select_only.has_body):
            prefer_forwarded = True
        elif not both.has_body:
            prefer_forwarded = False
    answers["prefer_forwarded"] = prefer_forwarded
    answers["select_alone_returns_body"] = select_alone
    answers["body_with_prefer_and_select"] = both.has_body if answerable else None
    # The PATCHes tell about return=representation; when they cannot (a 404 or 406 for no
    # match, or select bringing the body anyway), count=exact on the read tells whether this
    # proxy passes Prefer on at all.
    documented = prefer_forwarded if prefer_forwarded is not None else count_honoured
    dropped = " (Prefer is not passed on, it seems)" if documented is False else ""
    if not answerable:
        action = (
            "these PATCH answers cannot tell; runs send both Prefer and select, which "
            f"gets a body back under either rule{dropped}, and {_READ_DECIDES}"
        )
        return _Judgement(observed, documented, action)
    if both.has_body:
        action = "runs send both, and a body comes back"
        if both.body_shape in ("array", "empty array"):
            action += " that names the updated rows"
        if prefer_forwarded is None:
            action += f" (select alone brings it{dropped or ', so Prefer is moot for the body'})"
        return _Judgement(observed, documented, action)
    action = (
        "no body even with both (Prefer not passed on, or ignored): the answer names no row, so "
        "every PATCH's rows are read back with GET, one extra request per group of up to 50 rows, "
        f"and {_READ_DECIDES}"
    )
    return _Judgement(observed, False, action)


_CONTENT_RANGE_DOCS = (
    "PostgREST sends Content-Range on every success, with the total under Prefer: count=exact"
)


def _content_range_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    # PATCH answers first: theirs is the count mateo-bulk checks.
    answers_seen = sorted(found.values(), key=lambda each: each.method != "PATCH")
    successes = [each for each in answers_seen if each.http_status in (200, 204, 206)]
    with_header = [each for each in successes if "content-range" in each.headers]
    forwarded = bool(with_header) if successes else None
    answers["content_range_forwarded"] = forwarded
    if forwarded:
        sample = with_header[0]
        observed = f"{sample.purpose}: Content-Range {sample.headers['content-range']}"
        action = (
            "forwarded: a PATCH answered without a body and */* changed no row; a read's total "
            "(when count=exact is honoured) saves the GET that proves a short page complete; "
            "each row is still decided from the rows named or read back, never from a count"
        )
    elif forwarded is None:
        observed = "no successful answer to look at"
        action = "each row is decided from the rows named or read back, not from a count"
    else:
        observed = f"none of {len(successes)} successful answers had one"
        action = (
            "not forwarded: nothing depends on it; a read page shorter than asked is followed "
            "up with a read of the ids it left unanswered (one more GET), and each row is "
            "decided from the rows named or read back"
        )
    return _Judgement(observed, forwarded, action)


_SINGLE_OBJECT_DOCS = (
    "plain PostgREST answers one object only when asked to (Accept: "
    "application/vnd.pgrst.object+json), which mateo-bulk never sends"
)


def _single_object_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    zero = found["zero match, Prefer and select"]
    grouped = found["in. with 2 ids"]
    read = found["token check"]
    read_of_two = found["read of 2 ids"]
    refused = [each for each in (read_of_two, zero, grouped) if each.http_status == 406]
    # Without our asking for one, an object for a plain GET is the same proxy rule at work.
    object_read = read.http_status == 200 and read.body_shape == "object"
    forced = bool(refused) or object_read
    answers["single_object_forced"] = forced
    if not forced:
        observed = (
            f"2-id read {read_of_two.http_status}, zero-match PATCH {zero.http_status}, 2-id "
            f"PATCH {grouped.http_status}, GET body {read.body_shape}"
        )
        return _Judgement(
            observed, True, "not forced: grouped PATCHes and reads of several ids can be used"
        )
    observed = "; ".join(
        [f"{each.purpose}: {each.summary()}" for each in refused]
        + (["GET conversation?limit=1 answered a bare object"] if object_read else [])
    )
    if not refused:
        action = (
            "a plain read answered one bare object, yet no request was refused with 406: "
            "grouped PATCHes are used; should one be refused mid-run, mateo-bulk sends one row "
            "per request from then on"
        )
        return _Judgement(observed, False, action)
    action = (
        "forced: a PATCH naming several ids is refused (and rolled back); mateo-bulk sends one "
        "row per request from the first refusal (runs of this account start there once these "
        "answers are stored). A one-id 406 means the PATCH matched no row: the row is read back "
        "and the read decides, never not_found by itself. Reads of several ids refused too are "
        "read one id per GET: the snapshot is never given up"
    )
    return _Judgement(
        observed,
        False,
        action,
        to_do=f"{_ONE_ROW_PER_REQUEST}; or ask Mateo's support why this key gets single-object "
        "answers",
    )


_IN_FILTER_DOCS = (
    "PostgREST accepts id=in.(…) of any length; proxies commonly refuse URLs over 8 KB, and "
    f"{MAX_BATCH_SIZE} ids, the most mateo-bulk groups, make about 4 KB"
)


def _in_filter_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    grouped = found["in. with 2 ids"]
    lengths = sorted(
        (each for each in found.values() if each.purpose.startswith("in. with")),
        key=lambda each: each.ids,
    )
    passed = [each for each in lengths if _filter_accepted(each)]
    refused = [each for each in lengths if not _filter_accepted(each)]
    accepted = _filter_accepted(grouped)
    longest = passed[-1] if passed else None
    shortest_refused = next((each for each in refused if each.ids > 2), None)
    answers["in_filter_accepted"] = accepted
    answers["longest_in_list_accepted"] = longest.ids if longest else None
    answers["shortest_in_list_refused"] = shortest_refused.ids if shortest_refused else None
    answers["longest_url_accepted"] = longest.url_length if longest else None
    answers["shortest_url_refused"] = shortest_refused.url_length if shortest_refused else None
    tried = ", ".join(f"{each.ids} ids → {each.http_status}" for each in lengths)
    observed = f"{tried} (Prefer and select as mateo-bulk sends them)"
    if not accepted:
        answers["recommended_batch_size"] = 1
        reason = (
            f"{grouped.http_status} {grouped.error_code}"
            if grouped.error_code
            else str(grouped.http_status)
        )
        if grouped.http_status == 406:
            action = (
                f"grouped PATCH refused ({reason}): mateo-bulk sends one row per request (see "
                "the single-object question)"
            )
            return _Judgement(observed, False, action)
        if _refuses_grouping(grouped):
            action = (
                f"grouped PATCH refused ({reason}): mateo-bulk sends one row per request from "
                "the first refusal (runs of this account start at --batch-size 1 once these "
                "answers are stored)"
            )
            return _Judgement(observed, False, action, to_do=_refusal_to_do(grouped))
        if grouped.http_status == 404:
            return _Judgement(
                observed, False, _WRONG_ENDPOINT, copes=False, to_do=_WRONG_ENDPOINT_TO_DO
            )
        action = (
            f"grouped PATCH answered {reason}, not an answer mateo-bulk knows: the rows of such "
            "a PATCH would end rejected or failed, not done"
        )
        return _Judgement(observed, False, action, copes=False, to_do=_UNKNOWN_TO_DO)
    assert longest is not None
    batch = min(longest.ids, MAX_BATCH_SIZE)
    answers["recommended_batch_size"] = batch
    documented = longest.ids >= MAX_BATCH_SIZE
    if shortest_refused is not None:
        observed += (
            f"; refused from {shortest_refused.ids} ids ({shortest_refused.url_length}-byte "
            f"URL), accepted up to {longest.ids} ({longest.url_length} bytes)"
        )
    if batch >= DEFAULT_BATCH_SIZE:
        action = f"batch size {DEFAULT_BATCH_SIZE} is safe (up to {batch} works here)"
        if batch > DEFAULT_BATCH_SIZE:
            action += f"; --batch-size {batch} saves requests"
        return _Judgement(observed, documented, action)
    action = (
        f"runs of this account start at --batch-size {batch} once these answers are stored "
        f"(elsewhere, pass --batch-size {batch}): longer URLs are refused here, and a 414 mid-run "
        "halves the batch size anyway"
    )
    return _Judgement(observed, False, action)


_READ_DOCS = (
    "PostgREST answers a GET of id=in.(…) with an array and, under Prefer: count=exact, a "
    "Content-Range total (*/0 when no row matches)"
)


def _read_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    read = found["read of 2 ids"]
    observed = f"GET id=in.(<2 random>) with Prefer: count=exact: {read.summary()}"
    accepted = read.http_status in (200, 206) and read.body_shape in ("array", "empty array")
    honoured = _count_exact_honoured(read)
    answers["read_in_filter_accepted"] = (
        True if accepted else False if _refuses_grouping(read) else None
    )
    answers["count_exact_honoured"] = honoured
    if accepted:
        paging = (
            "reads page: up to 50 ids a GET; a page with fewer rows than ids asked is followed "
            "up with a read of the ids it left unanswered"
        )
        if honoured:
            action = (
                f"{paging}, unless the total says that was all; only a read that returns none "
                "of them shows they do not exist"
            )
        else:
            action = (
                f"{paging} (no total came back to say that was all, so that costs one more GET); "
                "only a read that returns none of them shows they do not exist"
            )
        return _Judgement(observed, honoured, action)
    if _refuses_grouping(read):
        fewer = (
            "halves the ids per GET at each refusal, down to one"
            if read.http_status == 414
            else "reads one id per GET from the first refusal"
        )
        action = (
            f"reads of several ids are refused ({read.summary()}): mateo-bulk {fewer} (a one-id "
            "406 means that row does not exist); the snapshot is never given up, at up to a GET "
            "per row"
        )
        if read.http_status == 406:
            # The single-object question carries what to do about a forced single object.
            return _Judgement(observed, False, action + " (see the single-object question)")
        return _Judgement(observed, False, action, to_do=_refusal_to_do(read))
    if read.http_status == 404:
        return _Judgement(
            observed, False, _WRONG_ENDPOINT, copes=False, to_do=_WRONG_ENDPOINT_TO_DO
        )
    if read.http_status in (200, 206) and read.body_shape in ("empty", "null"):
        action = (
            "a read answered without a JSON array: mateo-bulk would take it as 'none of these "
            "rows exist', and report existing rows not_found"
        )
    elif read.http_status in (200, 206) and read.body_shape == "object":
        action = (
            "one object for a read of several ids cannot be the whole answer: such reads fail, "
            "and the rows they were for are reported failed"
        )
    else:
        action = (
            "not an answer mateo-bulk knows: such reads fail, and the rows they were for are "
            "reported failed"
        )
    return _Judgement(observed, False, action, copes=False, to_do=_UNKNOWN_TO_DO)


_ERROR_BODY_DOCS = (
    "a 400 with a code and a message: Mateo documents {code, message, hint, status}, "
    "PostgREST sends {code, message, details, hint}"
)


def _error_body_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> _Judgement:
    error = found["invalid status"]
    answers["error_example"] = {
        "http_status": error.http_status,
        "code": error.error_code,
        "keys": list(error.error_keys),
        "content_type": error.headers.get("content-type"),
    }
    answers["error_body_keys"] = list(error.error_keys)
    observed = f'PATCH {{"status": "doctor-check"}} on a random id: {error.http_status}'
    if error.error_code:
        observed += f" {error.error_code}"
    if error.error_keys:
        observed += f", keys {', '.join(error.error_keys)}"
    else:
        observed += f", body {error.body_shape}"
    if error.http_status < 400:
        action = (
            "an invalid status was not refused (nothing matched, nothing changed): mateo-bulk "
            "validates every value before sending"
        )
        return _Judgement(observed, False, action)
    shape = (
        "Mateo's documented shape"
        if "status" in error.error_keys
        else "PostgREST's shape"
        if "details" in error.error_keys
        else "an unknown shape"
    )
    action = (
        f"{shape}; every key is read as optional: rejected rows are reported with the code "
        "and message the server gave (a page that is not JSON as 'an HTML error page')"
    )
    documented = error.http_status == 400 and {"code", "message"} <= set(error.error_keys)
    return _Judgement(observed, documented, action)


def _count_exact_honoured(read: Observation) -> bool | None:
    """Did `Prefer: count=exact` bring a total? None when the answer cannot tell."""
    if "count=exact" in read.headers.get("preference-applied", ""):
        return True
    if read.http_status not in (200, 206) or "content-range" not in read.headers:
        return None
    return read.headers["content-range"].rpartition("/")[2].strip().isdigit()


def _refuses_grouping(observation: Observation) -> bool:
    """The refusals after which mateo-bulk goes one id per request (`send`, `request_path`)."""
    return observation.http_status in (406, 414) or (
        observation.http_status == 400 and observation.error_code == "PGRST100"
    )


def _refusal_to_do(observation: Observation) -> str:
    if observation.http_status == 414:
        why = "to accept longer URLs"
    elif observation.http_status == 406:
        why = "why this key gets single-object answers"
    else:
        why = "why id=in.(…) is refused"
    return f"{_ONE_ROW_PER_REQUEST}; or ask Mateo's support {why}"


_Judge = Callable[[Found, list[Observation], dict[str, Any]], _Judgement]
#: The questions in the order they are printed: key, question, what the docs promise, and who
#: answers it.
_QUESTIONS: tuple[tuple[str, str, str, _Judge], ...] = (
    (
        "rate_limit_headers",
        "Which rate-limit headers come back?",
        _RATE_LIMIT_DOCS,
        _rate_limit_verdict,
    ),
    (
        "zero_match",
        "What does a PATCH that matches nothing return?",
        _ZERO_MATCH_DOCS,
        _zero_match_verdict,
    ),
    (
        "prefer_and_select",
        "Does select alone bring a body back? Is Prefer forwarded?",
        _PREFER_DOCS,
        _prefer_verdict,
    ),
    (
        "content_range",
        "Is Content-Range forwarded?",
        _CONTENT_RANGE_DOCS,
        _content_range_verdict,
    ),
    (
        "single_object",
        "Does the proxy force a single-object answer (406 PGRST116)?",
        _SINGLE_OBJECT_DOCS,
        _single_object_verdict,
    ),
    (
        "in_filter",
        "Is id=in.(…) accepted on a PATCH, and up to what length?",
        _IN_FILTER_DOCS,
        _in_filter_verdict,
    ),
    (
        "read",
        "Is a read of several ids accepted, with count=exact's total?",
        _READ_DOCS,
        _read_verdict,
    ),
    ("error_body", "What does an error body look like?", _ERROR_BODY_DOCS, _error_body_verdict),
)
