"""Doctor's judges of what the API's answers look like, one function per question.

The token, the rate-limit headers, a PATCH that matches nothing, Prefer and select,
Content-Range and the error body; `grouping_judges` has the questions of grouping ids.
"""

from __future__ import annotations

from typing import Any

from pipeline.commands.doctor.observation import (
    RATE_LIMIT_HEADERS,
    Observation,
    count_exact_honoured,
    means_no_match,
    retry_after_from,
)
from pipeline.commands.doctor.verdict import (
    READ_DECIDES,
    SUCCESS_SHAPE_UNSEEN,
    UNKNOWN_PATCH,
    Found,
    Judgement,
    unknown_answer,
    wrong_endpoint,
)

# Each question's "docs" is what Mateo's documentation (docs.getmateo.com) or, where it is
# silent, plain PostgREST promise for it: the baseline docs/api.md is written against.
TOKEN_DOCS = "Mateo documents 200 for a valid key, 401 for a missing one, 403 for an invalid one"


def token_verdict(read: Observation | None, valid: bool, stop: str) -> Judgement:
    if read is None:
        return Judgement("no answer", None, "nothing was asked", copes=None, to_do=stop)
    observed = f"GET conversation?select=id&limit=1 answered {read.http_status}"
    if read.http_status not in (401, 403):
        observed += f", body {read.body_shape}"
    if valid:
        documented = read.http_status in (200, 206)
        action = "the token is accepted"
        if not documented:
            action += " (what the 406 means is the single-object question's)"
        return Judgement(observed, documented, action)
    if read.http_status in (401, 403):
        return Judgement(
            observed + " (token invalid)",
            True,
            "nothing else was asked: no request of a run can succeed with this token",
            copes=False,
            to_do="set MATEO_API_TOKEN or --token-file to a valid token, then run doctor again",
        )
    return Judgement(
        observed,
        False,
        "nothing else was asked: this is not the conversation endpoint",
        copes=False,
        to_do="check --base-url (it should end in /api/v1), then run doctor again",
    )


RATE_LIMIT_DOCS = (
    "Mateo documents ratelimit-limit and ratelimit-remaining on every answer; ratelimit-reset "
    "and Retry-After are not documented"
)


def rate_limit_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
    read = found["token check"]
    seen = {name: read.headers[name] for name in RATE_LIMIT_HEADERS if name in read.headers}
    answers["ratelimit_headers"] = seen
    # Mateo allows 2 a second and 10,000 a day: a window that resets within a minute is the
    # per-second one; without a reset, the size of the limit tells.
    window = None
    reset = retry_after_from({"retry-after": seen.get("ratelimit-reset", "")})
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
    return Judgement(observed, documented, action)


ZERO_MATCH_DOCS = (
    "PostgREST >= 10.1: 200 [] with Prefer: return=representation, 204 without it; a 404 is "
    "PostgREST before 10.1, not documented"
)


def zero_match_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
    patch = found["zero match, Prefer and select"]
    answers["zero_match"] = {
        "http_status": patch.http_status,
        "body": patch.body_shape,
        "content_range": patch.headers.get("content-range"),
    }
    observed = f"PATCH id=eq.<random> with Prefer and select: {patch.summary()}"
    success = patch.http_status in (200, 201, 206)
    judgement: Judgement
    if success and patch.body_shape == "empty array":
        meaning = "empty array"
        judgement = Judgement(
            observed,
            patch.http_status == 200,
            f"[] names no row, and is never taken as not_found by itself: {READ_DECIDES}. "
            f"{SUCCESS_SHAPE_UNSEEN}",
        )
    elif patch.http_status == 204:
        meaning = "no content"
        judgement = Judgement(
            observed,
            True,
            "204 without a body names no row (whether Prefer is dropped is the next question): "
            f"{READ_DECIDES}; one extra GET per group of up to 50 rows",
        )
    elif success and patch.body_shape == "null":
        meaning = "object"
        judgement = Judgement(
            observed,
            False,
            "one object (null for no row), not PostgREST's array: for a PATCH of several ids "
            f"it names one row at most, so it is not taken as evidence; every row of a grouped "
            f"PATCH is read back with GET (one extra request per group of up to 50) and "
            f"{READ_DECIDES}",
        )
    elif success and patch.body_shape in ("array", "object"):
        # No row has the random id, so no row may be named: an object here is not one of ours.
        meaning = "rows not asked for"
        judgement = unknown_answer(
            observed,
            f"a PATCH of a random id answered with a body ({patch.body_shape}): an answer "
            "naming a row that was not asked for stops every run at once (exit 4), "
            "and an object that is not a conversation fails the rows",
        )
    elif means_no_match(patch):
        meaning = "not found 404"
        judgement = Judgement(
            observed,
            False,
            "404 is read as 'this PATCH changed none of these rows' (PostgREST before 10.1), "
            f"never as not_found by itself: {READ_DECIDES}. {SUCCESS_SHAPE_UNSEEN}",
        )
    elif patch.http_status == 404:
        meaning = "no such endpoint"
        judgement = wrong_endpoint(observed)
    elif patch.http_status == 406:
        meaning = "refused 406"
        judgement = Judgement(
            observed,
            False,
            "a one-id 406 says the PATCH matched no row and changed nothing; the row is read "
            "back and the read decides (never not_found by itself); see the single-object "
            "question",
        )
    else:
        meaning = "unexpected"
        judgement = unknown_answer(observed, UNKNOWN_PATCH)
    answers["zero_match_means"] = meaning
    return judgement


PREFER_DOCS = (
    "PostgREST honours Prefer (return=representation brings a body; count=exact a total); "
    "Mateo's recipes get a body from select: a PATCH sending both gets one either way"
)


def prefer_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
    both = found["zero match, Prefer and select"]
    select_only = found["zero match, select only"]
    count_honoured = count_exact_honoured(found["read of 2 ids"])
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
            f"gets a body back under either rule{dropped}, and {READ_DECIDES}"
        )
        return Judgement(observed, documented, action)
    if both.has_body:
        action = "runs send both, and a body comes back"
        if both.body_shape in ("array", "empty array"):
            action += " that names the updated rows"
        if prefer_forwarded is None:
            action += f" (select alone brings it{dropped or ', so Prefer is moot for the body'})"
        return Judgement(observed, documented, action)
    action = (
        "no body even with both (Prefer not passed on, or ignored): the answer names no row, so "
        "every PATCH's rows are read back with GET, one extra request per group of up to 50 rows, "
        f"and {READ_DECIDES}"
    )
    return Judgement(observed, False, action)


CONTENT_RANGE_DOCS = (
    "PostgREST sends Content-Range on every success, with the total under Prefer: count=exact"
)


def content_range_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
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
    return Judgement(observed, forwarded, action)


ERROR_BODY_DOCS = (
    "a 400 with a code and a message: Mateo documents {code, message, hint, status}, "
    "PostgREST sends {code, message, details, hint}"
)


def error_body_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
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
        return Judgement(observed, False, action)
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
    return Judgement(observed, documented, action)
