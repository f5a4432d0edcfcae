"""Doctor's judges of grouping: whether one PATCH or read may name several ids, and how many."""

from __future__ import annotations

from typing import Any

from pipeline.commands.doctor.observation import Observation, count_exact_honoured, filter_accepted
from pipeline.commands.doctor.verdict import (
    ONE_ROW_PER_REQUEST,
    UNKNOWN_PATCH,
    Found,
    Judgement,
    unknown_answer,
    wrong_endpoint,
)

#: The most ids mateo-bulk puts in one PATCH, whatever the server accepts (`--batch-size`).
MAX_BATCH_SIZE = 100
DEFAULT_BATCH_SIZE = 50

SINGLE_OBJECT_DOCS = (
    "plain PostgREST answers one object only when asked to (Accept: "
    "application/vnd.pgrst.object+json), which mateo-bulk never sends"
)


def single_object_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
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
        return Judgement(
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
        return Judgement(observed, False, action)
    action = (
        "forced: a PATCH naming several ids is refused (and rolled back); mateo-bulk sends one "
        "row per request from the first refusal (runs of this account start there once these "
        "answers are stored). A one-id 406 means the PATCH matched no row: the row is read back "
        "and the read decides, never not_found by itself. Reads of several ids refused too are "
        "read one id per GET: the snapshot is never given up"
    )
    return Judgement(
        observed,
        False,
        action,
        to_do=f"{ONE_ROW_PER_REQUEST}; or ask Mateo's support why this key gets single-object "
        "answers",
    )


IN_FILTER_DOCS = (
    "PostgREST accepts id=in.(…) of any length; proxies commonly refuse URLs over 8 KB, and "
    f"{MAX_BATCH_SIZE} ids, the most mateo-bulk groups, make about 4 KB"
)


def in_filter_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
    grouped = found["in. with 2 ids"]
    lengths = sorted(
        (each for each in found.values() if each.purpose.startswith("in. with")),
        key=lambda each: each.ids,
    )
    passed = [each for each in lengths if filter_accepted(each)]
    refused = [each for each in lengths if not filter_accepted(each)]
    accepted = filter_accepted(grouped)
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
            return Judgement(observed, False, action)
        if _refuses_grouping(grouped):
            action = (
                f"grouped PATCH refused ({reason}): mateo-bulk sends one row per request from "
                "the first refusal (runs of this account start at --batch-size 1 once these "
                "answers are stored)"
            )
            return Judgement(observed, False, action, to_do=_refusal_to_do(grouped))
        if grouped.http_status == 404:
            return wrong_endpoint(observed)
        return unknown_answer(observed, f"grouped PATCH answered {reason}, {UNKNOWN_PATCH}")
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
        return Judgement(observed, documented, action)
    action = (
        f"runs of this account start at --batch-size {batch} once these answers are stored "
        f"(elsewhere, pass --batch-size {batch}): longer URLs are refused here, and a 414 mid-run "
        "halves the batch size anyway"
    )
    return Judgement(observed, False, action)


READ_DOCS = (
    "PostgREST answers a GET of id=in.(…) with an array and, under Prefer: count=exact, a "
    "Content-Range total (*/0 when no row matches)"
)


def read_verdict(
    found: Found, rate_limited: list[Observation], answers: dict[str, Any]
) -> Judgement:
    read = found["read of 2 ids"]
    observed = f"GET id=in.(<2 random>) with Prefer: count=exact: {read.summary()}"
    accepted = read.http_status in (200, 206) and read.body_shape in ("array", "empty array")
    honoured = count_exact_honoured(read)
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
        return Judgement(observed, honoured, action)
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
            return Judgement(observed, False, action + " (see the single-object question)")
        return Judgement(observed, False, action, to_do=_refusal_to_do(read))
    if read.http_status == 404:
        return wrong_endpoint(observed)
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
    return unknown_answer(observed, action)


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
    return f"{ONE_ROW_PER_REQUEST}; or ask Mateo's support {why}"
