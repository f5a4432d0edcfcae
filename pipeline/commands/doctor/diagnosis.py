"""`diagnose`, doctor's entry point: ask the API, judge each answer, report, store the answers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from pipeline.api.quota import QuotaLedger
from pipeline.api.wire import check_base_url
from pipeline.commands.doctor.answer_judges import (
    CONTENT_RANGE_DOCS,
    ERROR_BODY_DOCS,
    PREFER_DOCS,
    RATE_LIMIT_DOCS,
    TOKEN_DOCS,
    ZERO_MATCH_DOCS,
    content_range_verdict,
    error_body_verdict,
    prefer_verdict,
    rate_limit_verdict,
    token_verdict,
    zero_match_verdict,
)
from pipeline.commands.doctor.grouping_judges import (
    IN_FILTER_DOCS,
    READ_DOCS,
    SINGLE_OBJECT_DOCS,
    in_filter_verdict,
    read_verdict,
    single_object_verdict,
)
from pipeline.commands.doctor.observation import Observation
from pipeline.commands.doctor.probe import DoctorStopped, Probe
from pipeline.commands.doctor.report import DoctorReport, save_answers
from pipeline.commands.doctor.verdict import Found, Judgement, Verdict
from pipeline.core.errors import InputError


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
    probe = Probe(base_url, token, transport, rate, max_wait, timeout, ledger)
    stopped: str | None = None
    try:
        async with probe:
            try:
                await probe.ask_everything()
            except DoctorStopped as stop:
                stopped = str(stop)
    finally:
        if ledger is not None:
            ledger.close()
    report = _report(probe, base_url, stopped)
    if save and report.token_valid and not stopped:
        path = save_answers(report, token)
        report = DoctorReport(**{**_fields(report), "answers_file": str(path)})
    return report


def _fields(report: DoctorReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in DoctorReport.__dataclass_fields__}


def _report(probe: Probe, base_url: str, stopped: str | None) -> DoctorReport:
    found = {observation.purpose: observation for observation in probe.observations}
    not_asked = "run doctor again once the cause is fixed: it stopped before asking this"
    token = token_verdict(
        found.get("token check"),
        probe.token_valid,
        f"doctor stopped early: {stopped}" if stopped else "run doctor again",
    )
    verdicts = [_verdict("token", "Is the token valid?", TOKEN_DOCS, token)]
    answers: dict[str, Any] = {"token_valid": probe.token_valid}
    if probe.token_valid:
        for key, question, docs, judge in _QUESTIONS:
            try:
                judgement = judge(found, probe.rate_limited, answers)
            except KeyError:
                # Doctor stopped before sending the request this question needs.
                judgement = Judgement(
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


def _verdict(key: str, question: str, docs: str, judgement: Judgement) -> Verdict:
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


_Judge = Callable[[Found, list[Observation], dict[str, Any]], Judgement]
#: The questions in the order they are printed: key, question, what the docs promise, and who
#: answers it.
_QUESTIONS: tuple[tuple[str, str, str, _Judge], ...] = (
    (
        "rate_limit_headers",
        "Which rate-limit headers come back?",
        RATE_LIMIT_DOCS,
        rate_limit_verdict,
    ),
    (
        "zero_match",
        "What does a PATCH that matches nothing return?",
        ZERO_MATCH_DOCS,
        zero_match_verdict,
    ),
    (
        "prefer_and_select",
        "Does select alone bring a body back? Is Prefer forwarded?",
        PREFER_DOCS,
        prefer_verdict,
    ),
    (
        "content_range",
        "Is Content-Range forwarded?",
        CONTENT_RANGE_DOCS,
        content_range_verdict,
    ),
    (
        "single_object",
        "Does the proxy force a single-object answer (406 PGRST116)?",
        SINGLE_OBJECT_DOCS,
        single_object_verdict,
    ),
    (
        "in_filter",
        "Is id=in.(…) accepted on a PATCH, and up to what length?",
        IN_FILTER_DOCS,
        in_filter_verdict,
    ),
    (
        "read",
        "Is a read of several ids accepted, with count=exact's total?",
        READ_DOCS,
        read_verdict,
    ),
    ("error_body", "What does an error body look like?", ERROR_BODY_DOCS, error_body_verdict),
)
