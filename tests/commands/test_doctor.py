"""`mateo-bulk doctor` against the sandbox: right verdicts for every switch, harmless, cheap."""

from __future__ import annotations

import functools
import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.api.account import account_fingerprint, answers_path, load_answers
from pipeline.api.quota import QuotaLedger
from pipeline.cli.main import main
from pipeline.commands.doctor.diagnosis import diagnose
from pipeline.commands.doctor.probe import MAX_REQUESTS
from pipeline.commands.doctor.report import NOTHING_TO_DO, DoctorReport, report_text
from pipeline.sandbox import Sandbox
from tests.helpers import run_cli


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Answers go to a directory of the test's own, never the home directory."""
    path = tmp_path / "state"
    monkeypatch.setenv("MATEO_BULK_STATE_DIR", str(path))
    return path


def run_doctor(sandbox: Sandbox, **switches: Any) -> DoctorReport:
    """Diagnose the sandbox with `switches` set, unpaced, and check that nothing changed."""
    sandbox.configure(**switches)
    before = sandbox.rows()
    report = anyio.run(functools.partial(diagnose, sandbox.base_url, sandbox.token, rate=None))
    stats = sandbox.stats()
    assert sandbox.rows() == before
    assert stats["updates"] == 0
    assert stats["safety_violations"] == 0
    assert report.requests == stats["requests"] < 20
    return report


def verdict(report: DoctorReport, key: str) -> Any:
    return next(each for each in report.verdicts if each.key == key)


def marks(report: DoctorReport) -> dict[str, str]:
    return {each.key: each.mark for each in report.verdicts}


def marked_lines(text: str) -> list[str]:
    """The verdict lines of the text output: those starting with a mark (the legend does not)."""
    return [line for line in text.splitlines() if line.startswith("[")]


def what_to_do(text: str) -> list[str]:
    """The numbered items under "What to do" at the end of the text output."""
    tail = text[text.rindex("What to do") :].splitlines()[1:]
    return [line.split(". ", 1)[1] for line in tail if line.strip()[:1].isdigit()]


#: Mateo documents ratelimit-limit and ratelimit-remaining; the default sandbox has no limit,
#: so it sends none: these switches make it answer as Mateo's docs say, without slowing doctor.
DOCUMENTED_LIMITS = {"rate": 1000.0, "burst": 1000}


def _state(state_dir: Path) -> dict[str, str]:
    """The state directory a doctor run stores its answers in."""
    return {"MATEO_BULK_STATE_DIR": str(state_dir)}


def test_default_sandbox_is_plain_postgrest(sandbox: Sandbox) -> None:
    """Plain PostgREST: [] for no match, Prefer forwarded, Content-Range, in. up to 200 ids."""
    report = run_doctor(sandbox)
    answers = report.answers
    assert report.stopped is None and report.exit_code == 0 and report.token_valid
    # Plain PostgREST sends no ratelimit-* headers, which Mateo documents: handled, not as
    # documented; every other answer is as documented.
    assert {key for key, mark in marks(report).items() if mark != "ok"} == {"rate_limit_headers"}
    assert marks(report)["rate_limit_headers"] == "~~"
    assert not any(each.action_needed for each in report.verdicts)
    assert answers["read_in_filter_accepted"] is True
    assert answers["count_exact_honoured"] is True
    assert answers["zero_match"] == {
        "http_status": 200,
        "body": "empty array",
        "content_range": "*/*",
    }
    assert answers["prefer_forwarded"] is True
    assert answers["select_alone_returns_body"] is False
    assert answers["content_range_forwarded"] is True
    assert answers["single_object_forced"] is False
    assert answers["in_filter_accepted"] is True
    assert answers["longest_in_list_accepted"] == 200
    assert answers["recommended_batch_size"] == 100
    assert answers["error_body_keys"] == ["code", "details", "hint", "message", "status"]
    assert "batch size 50 is safe" in verdict(report, "in_filter").action
    assert [each.key for each in report.verdicts] == [
        "token",
        "rate_limit_headers",
        "zero_match",
        "prefer_and_select",
        "content_range",
        "single_object",
        "in_filter",
        "read",
        "error_body",
    ]


def test_documented_answers_are_all_ok(sandbox: Sandbox) -> None:
    """A sandbox answering as Mateo documents: every verdict [ok], nothing to do, exit 0."""
    report = run_doctor(sandbox, **DOCUMENTED_LIMITS)
    assert set(marks(report).values()) == {"ok"}
    assert all(each.documented and each.copes for each in report.verdicts)
    assert report.to_do == [] and report.exit_code == 0
    text = report_text(report)
    assert all(line.startswith("[ok] ") for line in marked_lines(text))
    assert text.rstrip().endswith(f"What to do: {NOTHING_TO_DO}.")


def test_proxy_dropping_prefer_answering_404_and_one_object_is_not_all_ok(
    sandbox: Sandbox,
) -> None:
    """drop_prefer + zero_match_404 + object_response=first: [~~] where undocumented, exit 0."""
    report = run_doctor(
        sandbox,
        drop_prefer=True,
        zero_match_404=True,
        object_response="first",
        **DOCUMENTED_LIMITS,
    )
    found = marks(report)
    # The 404 hides the body's shape and Prefer from the PATCHes; the read's count=exact,
    # dropped with every Prefer, still shows the proxy is not plain PostgREST.
    assert found["zero_match"] == found["prefer_and_select"] == found["read"] == "~~"
    for key in ("zero_match", "prefer_and_select", "read"):
        each = verdict(report, key)
        assert each.documented is False and each.copes is True and not each.action_needed
    assert report.answers["zero_match_means"] == "not found 404"
    assert report.answers["count_exact_honoured"] is False
    assert "never as not_found by itself" in verdict(report, "zero_match").action
    assert "cannot be seen without changing a row" in verdict(report, "zero_match").action
    assert report.exit_code == 0 and report.to_do == []
    text = report_text(report)
    assert "[~~] What does a PATCH that matches nothing return?" in text
    assert f"What to do: {NOTHING_TO_DO}." in text


def test_a_url_limit_below_two_ids_needs_action(sandbox: Sandbox) -> None:
    """A proxy refusing a 2-id URL (414): one row per request, [!!], listed to do, exit 1."""
    report = run_doctor(sandbox, max_url_length=120)
    in_filter = verdict(report, "in_filter")
    assert report.answers["recommended_batch_size"] == 1
    assert in_filter.mark == "!!" and in_filter.copes is True and in_filter.documented is False
    assert in_filter.to_do is not None and "longer URLs" in in_filter.to_do
    assert verdict(report, "read").mark == "!!"
    assert report.exit_code == 1 and report.stopped is None
    text = report_text(report)
    # Both findings share one cause and one remedy: listed once.
    assert what_to_do(text) == [in_filter.to_do]
    assert "What to do (exit code 1):" in text


def test_an_answer_mateo_bulk_does_not_know_needs_action(sandbox: Sandbox) -> None:
    """A 200 object for a PATCH that matched nothing and for a read: does not cope, exit 1."""
    report = run_doctor(sandbox, fault_object=1.0)
    for key in ("zero_match", "read"):
        each = verdict(report, key)
        assert each.mark == "!!" and each.copes is False and each.action_needed
    assert report.answers["zero_match_means"] == "rows not asked for"
    assert report.exit_code == 1
    assert len(report.to_do) == 1 and "Mateo's support" in report.to_do[0]
    assert what_to_do(report_text(report)) == report.to_do


def test_object_response_one_is_not_claimed_from_a_zero_match(sandbox: Sandbox) -> None:
    """object_response=one only shows on a one-row success: doctor says it cannot see it."""
    report = run_doctor(sandbox, object_response="one")
    assert report.answers["zero_match_means"] == "empty array"
    assert "cannot be seen without changing a row" in verdict(report, "zero_match").action


def test_object_response_first_is_seen_as_an_object(sandbox: Sandbox) -> None:
    """A proxy answering rows[0] gives null for no match: grouped rows are read back."""
    report = run_doctor(sandbox, object_response="first")
    assert report.answers["zero_match"]["body"] == "null"
    assert report.answers["zero_match_means"] == "object"
    zero_match = verdict(report, "zero_match")
    assert zero_match.documented is False and zero_match.copes is True
    assert zero_match.mark == "~~" and "back with GET" in zero_match.action
    assert report.exit_code == 0


def test_select_alone_returns_a_body(sandbox: Sandbox) -> None:
    """select_returns_body: the select-only PATCH has a body too."""
    report = run_doctor(sandbox, select_returns_body=True)
    assert report.answers["select_alone_returns_body"] is True
    assert report.answers["prefer_forwarded"] is True


def test_zero_match_404(sandbox: Sandbox) -> None:
    """An old PostgREST's 404 for no match: [~~], rows read back; in. still counts as accepted."""
    report = run_doctor(sandbox, zero_match_404=True)
    assert report.answers["zero_match_means"] == "not found 404"
    assert verdict(report, "zero_match").mark == "~~" and report.exit_code == 0
    assert report.answers["in_filter_accepted"] is True
    assert report.answers["recommended_batch_size"] == 100
    assert report.answers["prefer_forwarded"] is None


def test_forced_single_object(sandbox: Sandbox) -> None:
    """406 PGRST116 on the 2-id read and PATCHes: one row per request, [!!], exit 1."""
    report = run_doctor(sandbox, force_single_object=True)
    answers = report.answers
    assert answers["single_object_forced"] is True
    assert answers["in_filter_accepted"] is False
    assert answers["read_in_filter_accepted"] is False
    assert answers["recommended_batch_size"] == 1
    assert answers["longest_in_list_accepted"] is None
    assert "one row per request" in verdict(report, "in_filter").action
    assert report.requests == 6
    single = verdict(report, "single_object")
    assert single.mark == "!!" and single.copes is True and single.documented is False
    assert "never not_found by itself" in single.action
    # One cause, one [!!]: the 406s of the other questions point to this one.
    assert [key for key, mark in marks(report).items() if mark == "!!"] == ["single_object"]
    assert report.exit_code == 1
    text = report_text(report)
    assert what_to_do(text) == [single.to_do]
    assert "requests per row" in text[text.rindex("What to do") :]


def test_content_range_dropped(sandbox: Sandbox) -> None:
    """drop_content_range: no success carries Content-Range."""
    report = run_doctor(sandbox, drop_content_range=True)
    assert report.answers["content_range_forwarded"] is False
    assert report.answers["zero_match"]["content_range"] is None
    assert "not forwarded" in verdict(report, "content_range").action


def test_prefer_dropped(sandbox: Sandbox) -> None:
    """drop_prefer: 204 without a body even with Prefer, so rows are read back with GET."""
    report = run_doctor(sandbox, drop_prefer=True)
    answers = report.answers
    assert answers["prefer_forwarded"] is False
    assert answers["zero_match_means"] == "no content"
    assert answers["body_with_prefer_and_select"] is False
    prefer = verdict(report, "prefer_and_select")
    assert "back with GET" in prefer.action
    assert prefer.mark == "~~" and prefer.documented is False
    assert verdict(report, "zero_match").documented is True  # 204 is PostgREST's no-match too
    assert report.exit_code == 0


def test_prefer_dropped_but_select_brings_the_body(sandbox: Sandbox) -> None:
    """drop_prefer with select_returns_body: a body, and no way to tell about Prefer."""
    report = run_doctor(sandbox, drop_prefer=True, select_returns_body=True)
    assert report.answers["select_alone_returns_body"] is True
    assert report.answers["prefer_forwarded"] is None
    assert report.answers["body_with_prefer_and_select"] is True


def test_url_limit_between_50_and_100_ids(sandbox: Sandbox) -> None:
    """A proxy refusing 100 ids but not 50 gives batch size 50, with the URL lengths."""
    report = run_doctor(sandbox, max_url_length=3000)
    answers = report.answers
    assert answers["longest_in_list_accepted"] == 50
    assert answers["shortest_in_list_refused"] == 100
    assert answers["recommended_batch_size"] == 50
    assert answers["longest_url_accepted"] <= 3000 < answers["shortest_url_refused"]
    assert "batch size 50 is safe" in verdict(report, "in_filter").action


def test_url_limit_below_50_ids(sandbox: Sandbox) -> None:
    """When 50 ids are refused, doctor tries shorter lists and recommends the one that passed."""
    report = run_doctor(sandbox, max_url_length=1000)
    assert report.answers["longest_in_list_accepted"] == 20
    assert report.answers["recommended_batch_size"] == 20
    in_filter = verdict(report, "in_filter")
    assert in_filter.mark == "~~" and "--batch-size 20" in in_filter.action
    # Runs start at the stored batch size by themselves: nothing for the user to do.
    assert not in_filter.action_needed and report.exit_code == 0


def test_postgrest_error_body(sandbox: Sandbox) -> None:
    """error_body=postgrest: the keys lack Mateo's status; the 22P02 is still recorded."""
    report = run_doctor(sandbox, error_body="postgrest")
    answers = report.answers
    assert answers["error_body_keys"] == ["code", "details", "hint", "message"]
    assert answers["error_example"]["http_status"] == 400
    assert answers["error_example"]["code"] == "22P02"
    assert "PostgREST's shape" in verdict(report, "error_body").action


def test_rate_limit_headers_seen(sandbox: Sandbox) -> None:
    """With a limit, the three ratelimit-* headers and their values are reported."""
    report = run_doctor(sandbox, rate=1000.0, burst=1000)
    headers = report.answers["ratelimit_headers"]
    assert set(headers) == {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"}
    assert headers["ratelimit-limit"] == "1000"
    assert report.answers["ratelimit_window"] == "rate"
    assert "steer the pace" in verdict(report, "rate_limit_headers").action


def test_rate_limit_headers_of_the_daily_window(sandbox: Sandbox) -> None:
    """Headers describing the daily quota (reset in hours) are told apart from the rate's."""
    report = run_doctor(sandbox, daily_quota=10_000, ratelimit_window="day")
    assert report.answers["ratelimit_headers"]["ratelimit-limit"] == "10000"
    assert report.answers["ratelimit_window"] == "day"


def test_rate_limit_headers_off(sandbox: Sandbox) -> None:
    """With every ratelimit-* header switched off, none is reported and the pace is fixed."""
    report = run_doctor(
        sandbox,
        rate=1000.0,
        burst=1000,
        ratelimit_limit_header=False,
        ratelimit_remaining_header=False,
        ratelimit_reset_header=False,
    )
    assert report.answers["ratelimit_headers"] == {}
    assert "keeps to --rate" in verdict(report, "rate_limit_headers").action


@pytest.mark.parametrize("retry_after_header", [True, False])
def test_spent_quota_stops_early_and_tells_about_retry_after(
    sandbox: Sandbox, retry_after_header: bool
) -> None:
    """A 429 asking for a day's wait stops doctor (exit 3) and records Retry-After or its lack."""
    # Without ratelimit-remaining, doctor cannot see the spent window coming and meets the 429.
    report = run_doctor(
        sandbox,
        daily_quota=1,
        retry_after_header=retry_after_header,
        ratelimit_remaining_header=False,
    )
    assert report.exit_code == 3
    assert report.stopped is not None and "rate limited" in report.stopped
    assert report.answers["retry_after_on_429"] is retry_after_header
    not_asked = verdict(report, "zero_match")
    assert not_asked.observed == "not asked: doctor stopped early"
    assert not_asked.mark == "!!" and not_asked.documented is None and not_asked.copes is None
    assert report.to_do[0] == f"doctor stopped early: {report.stopped}"
    assert report.answers_file is None


def test_a_spent_window_stops_doctor_before_the_429(sandbox: Sandbox) -> None:
    """ratelimit-remaining: 0 with a day's reset stops doctor at once, rate limited, exit 3."""
    report = run_doctor(sandbox, daily_quota=1)
    assert report.exit_code == 3
    assert report.stopped is not None and "rate limited" in report.stopped
    assert sandbox.stats()["rate_limited"] == 0


@pytest.mark.long
def test_waits_out_a_short_retry_after(sandbox: Sandbox) -> None:
    """A 429 with a short Retry-After is waited out, after which no request is refused again."""
    # Without ratelimit-remaining to warn of the spent window, the first 429 is met.
    report = run_doctor(sandbox, rate=20.0, burst=1, ratelimit_remaining_header=False)
    stats = sandbox.stats()
    assert report.stopped is None
    assert stats["rate_limited"] == 1
    assert report.answers["retry_after_on_429"] is True
    assert report.answers["recommended_batch_size"] == 100


@pytest.mark.long
def test_a_spent_short_window_is_waited_out_without_a_429(sandbox: Sandbox) -> None:
    """ratelimit-remaining: 0 with a short reset pauses doctor: no request is refused."""
    report = run_doctor(sandbox, rate=20.0, burst=1)
    assert report.stopped is None
    assert sandbox.stats()["rate_limited"] == 0


def test_answers_file_holds_no_token_and_loads_back(sandbox: Sandbox, state_dir: Path) -> None:
    """The answers are stored per account fingerprint with URL and time, and read back."""
    report = run_doctor(sandbox)
    path = state_dir / "accounts" / account_fingerprint(sandbox.token) / "doctor.json"
    assert report.answers_file == str(path)
    text = path.read_text(encoding="utf-8")
    assert sandbox.token not in text
    loaded = load_answers(sandbox.token, sandbox.base_url + "/")
    assert loaded is not None
    assert loaded["base_url"] == sandbox.base_url
    assert loaded["checked_at"].endswith("Z")
    assert loaded["answers"]["recommended_batch_size"] == 100
    assert load_answers(sandbox.token, "https://integration.getmateo.com/api/v1") is None
    assert load_answers("another-token", sandbox.base_url) is None


def test_answers_of_the_first_format_still_load(sandbox: Sandbox) -> None:
    """Format 2 is written; a format-1 file (verdicts with `ok`) still gives its answers."""
    run_doctor(sandbox)
    path = answers_path(sandbox.token)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == 2
    assert {"documented", "copes", "action_needed", "to_do", "mark"} <= set(document["verdicts"][0])
    document["format"] = 1
    document["verdicts"] = [
        {"key": "token", "question": "?", "observed": "", "action": "", "ok": True}
    ]
    path.write_text(json.dumps(document), encoding="utf-8")
    loaded = load_answers(sandbox.token, sandbox.base_url)
    assert loaded is not None and loaded["answers"]["recommended_batch_size"] == 100


def test_requests_count_in_the_daily_ledger(sandbox: Sandbox) -> None:
    """Doctor's requests come out of the account's daily budget, shared with runs."""
    report = run_doctor(sandbox)
    ledger = QuotaLedger(sandbox.token)
    try:
        assert ledger.budget().used == report.requests
    finally:
        ledger.close()


def test_spent_ledger_stops_before_sending(sandbox: Sandbox) -> None:
    """With the day's budget already spent on this machine, doctor sends nothing (exit 3)."""
    ledger = QuotaLedger(sandbox.token)
    budget = ledger.budget()
    ledger.close()
    day = (budget.resets_at - timedelta(days=1)).date().isoformat()
    with sqlite3.connect(ledger.path) as connection:
        connection.execute(
            "INSERT INTO used VALUES (?, ?, ?)",
            (account_fingerprint(sandbox.token), day, budget.limit),
        )
    connection.close()
    report = run_doctor(sandbox)
    assert report.exit_code == 3
    assert report.stopped is not None and "budget" in report.stopped
    assert sandbox.stats()["requests"] == 0


def test_report_text_has_a_verdict_per_question(sandbox: Sandbox) -> None:
    """The text: a legend, each question with its mark, the docs and mateo-bulk, what to do."""
    report = run_doctor(sandbox)
    text = report_text(report)
    legend = text.index("legend: [ok] as documented")
    assert legend < text.index("[~~] not as documented") < text.index("[!!] needs your action")
    assert legend < text.index(report.verdicts[0].question)
    for each in report.verdicts:
        assert f"[{each.mark}] {each.question}" in text
    assert len(marked_lines(text)) == len(report.verdicts)
    assert (
        text.count("     docs:       ") == text.count("     mateo-bulk: ") == len(report.verdicts)
    )
    assert text.rstrip().endswith(f"What to do: {NOTHING_TO_DO}.")
    assert f"{report.requests} requests sent" in text
    assert sandbox.token not in text
    assert report.requests < MAX_REQUESTS + 1


def test_cli_against_mateo_limits(sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """As a subprocess at Mateo's 2/s: exit 0, --json, no 429, at most 2 requests a second."""
    sandbox.configure(rate=2.0, burst=2, daily_quota=10_000)
    log = tmp_path / "requests.jsonl"
    sandbox.state.open_request_log(log)
    before = sandbox.rows()
    result = run_cli(
        "doctor",
        "--base-url",
        sandbox.base_url,
        "--json",
        token=sandbox.token,
        env=_state(state_dir),
        # Its own process, as a user's: in the test's, the sandbox's thread would share the
        # interpreter with doctor's pacer and could bunch its requests' arrivals.
        process=True,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    stats = sandbox.stats()
    assert document["requests"] == stats["requests"] < 20
    assert stats["rate_limited"] == 0
    sandbox.state.close_request_log()
    arrivals = [json.loads(line)["arrived"] for line in log.read_text().splitlines()]
    assert len(arrivals) == stats["requests"]
    # Judged from the arrival stamps with slack: the sandbox's thread shares two cores with the
    # rest of the suite, so a stamp can run late and bunch with the next (a strict 1-second
    # window saw 3 under load). Unpaced, doctor's requests all arrive within a fraction of a
    # second; paced at 2/s, any three span a second and all of them (n - 1) / 2 seconds.
    slack = 0.25
    spans = [third - first for first, third in zip(arrivals, arrivals[2:], strict=False)]
    assert min(spans) >= 1.0 - slack
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) / 2 - slack
    assert stats["updates"] == 0 and stats["safety_violations"] == 0
    assert sandbox.rows() == before
    assert document["answers"]["ratelimit_headers"]["ratelimit-limit"] == "2"
    assert document["exit_code"] == 0 and document["to_do"] == []
    assert set(document["legend"]) == {"ok", "~~", "!!"}
    for each in document["verdicts"]:
        assert each["mark"] == "ok"
        assert each["documented"] is True and each["copes"] is True
        assert each["action_needed"] is False and each["to_do"] is None
        assert each["docs"]
    assert sandbox.token not in result.stdout + result.stderr
    stored = Path(document["answers_file"])
    assert stored.is_relative_to(state_dir)
    assert sandbox.token not in stored.read_text(encoding="utf-8")


@pytest.mark.long
def test_cli_exits_1_when_a_finding_needs_action(sandbox: Sandbox, state_dir: Path) -> None:
    """A forced single object: exit 1, [!!] and the remedy under "What to do", in JSON too."""
    sandbox.configure(force_single_object=True)
    result = run_cli(
        "doctor", "--base-url", sandbox.base_url, token=sandbox.token, env=_state(state_dir)
    )
    assert result.returncode == 1, result.stderr
    assert "[!!] Does the proxy force a single-object answer" in result.stdout
    assert "What to do (exit code 1):" in result.stdout
    assert "Traceback" not in result.stderr
    result = run_cli(
        "doctor",
        "--base-url",
        sandbox.base_url,
        "--json",
        token=sandbox.token,
        env=_state(state_dir),
    )
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["exit_code"] == 1 and len(document["to_do"]) == 1
    needing = [each["key"] for each in document["verdicts"] if each["action_needed"]]
    assert needing == ["single_object"]


def test_cli_wrong_token(sandbox: Sandbox, state_dir: Path) -> None:
    """A refused token: exit 3 after one request, a clear message, the token nowhere."""
    wrong = "wrong-token-4f1c9a"
    result = run_cli("doctor", "--base-url", sandbox.base_url, token=wrong, env=_state(state_dir))
    assert result.returncode == 3
    assert "403" in result.stderr and "not valid" in result.stderr
    assert "Traceback" not in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert sandbox.stats()["requests"] == 1
    for path in state_dir.rglob("*"):
        assert not path.is_file() or wrong.encode() not in path.read_bytes()
    assert load_answers(wrong, sandbox.base_url) is None


def test_cli_sandbox_needs_no_token(state_dir: Path) -> None:
    """`doctor --sandbox` diagnoses a sandbox with Mateo's limits and stores nothing."""
    result = run_cli("doctor", "--sandbox", token=None, env=_state(state_dir))
    assert result.returncode == 0, result.stderr
    assert "[ok] Is the token valid?" in result.stdout
    assert "legend: " in result.stdout
    assert f"What to do: {NOTHING_TO_DO}." in result.stdout
    assert "requests sent" in result.stdout
    assert not (state_dir / "accounts").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--base-url", "http://127.0.0.1:9/api/v1"], "no API token"),
        (["--base-url", "http://example.com/api/v1"], "plain http"),
        (["--base-url", "ftp://example.com"], "https://"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    arguments: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No token or a bad URL: exit 2, one line on stderr, nothing sent."""
    monkeypatch.delenv("MATEO_API_TOKEN", raising=False)
    if message != "no API token":
        monkeypatch.setenv("MATEO_API_TOKEN", "some-token")
    assert main(["doctor", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert len(error.strip().splitlines()) == 1
