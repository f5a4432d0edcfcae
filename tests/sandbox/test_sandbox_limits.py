"""The gateway's limits: token bucket, daily quota, 429 answers, headers, the 1-second window."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from pipeline.sandbox import Sandbox, SandboxConfig, running_sandbox


class FakeClock:
    """A monotonic clock the test moves by hand, so limits are checked exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limited(clock: FakeClock) -> Iterator[Sandbox]:
    """A sandbox on a fake clock with 1 request/s, a bucket of 2 and 5 requests a day."""
    config = SandboxConfig(rate=1.0, burst=2, daily_quota=5)
    with running_sandbox(config, generate=10, clock=clock) as server:
        yield server


def _client(sandbox: Sandbox) -> httpx.Client:
    return httpx.Client(
        base_url=sandbox.base_url, timeout=10, headers={"Authorization": f"Bearer {sandbox.token}"}
    )


def test_burst_then_429_with_retry_after(limited: Sandbox, clock: FakeClock) -> None:
    """Past the bucket: 429, the error body, Retry-After in whole seconds, ratelimit headers."""
    with _client(limited) as client:
        first = client.get("/conversation")
        assert first.status_code == 200
        assert first.headers["ratelimit-limit"] == "2"
        assert first.headers["ratelimit-remaining"] == "1"
        assert client.get("/conversation").status_code == 200
        refused = client.get("/conversation")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-reset"] == "2"
        assert refused.json()["code"] == "RATE_LIMITED" and refused.json()["status"] == 429
        clock.now += 1.0
        assert client.get("/conversation").status_code == 200
    assert limited.stats()["rate_limited"] == 1


def test_retry_after_is_rounded_up(clock: FakeClock) -> None:
    """Retry-After is the wait until the next token, rounded up to whole seconds."""
    with running_sandbox(SandboxConfig(rate=0.25, burst=1), generate=1, clock=clock) as sandbox:
        with _client(sandbox) as client:
            client.get("/conversation")
            assert client.get("/conversation").headers["retry-after"] == "4"
            clock.now += 1.5
            assert client.get("/conversation").headers["retry-after"] == "3"


def test_exact_pacing_is_never_refused(clock: FakeClock) -> None:
    """A client sending exactly `rate` evenly spaced requests never sees a 429."""
    with running_sandbox(SandboxConfig(rate=2.0, burst=1), generate=1, clock=clock) as sandbox:
        with _client(sandbox) as client:
            statuses = []
            for _ in range(40):
                statuses.append(client.get("/conversation").status_code)
                clock.now += 0.5
            assert set(statuses) == {200}
            clock.now -= 0.2
            assert client.get("/conversation").status_code == 429


def test_real_time_pacing_is_never_refused() -> None:
    """On the real clock, requests paced at the rate (absolute schedule) all succeed.

    The bucket holds 2, as by default for Mateo's 2 requests/s, so one request delayed by a
    loaded machine and the next sent on time are not taken for a burst; exactness without
    jitter is pinned by the fake-clock test above. A request is never sent sooner than 1/rate
    after the one before: after a stall of 0.2 s or more (a busy machine), catching up with the
    schedule would send 3 at once, a burst the server rightly refuses.
    """
    with running_sandbox(SandboxConfig(rate=10.0, burst=2), generate=1) as sandbox:
        with _client(sandbox) as client:
            start = time.monotonic()
            previous = -float("inf")
            statuses = []
            for k in range(20):
                delay = max(start + k / 10.0, previous + 1 / 10.0) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                previous = time.monotonic()
                statuses.append(client.get("/conversation").status_code)
    assert statuses == [200] * 20


def test_daily_quota_counts_refused_requests(limited: Sandbox, clock: FakeClock) -> None:
    """Unauthenticated and rate-limited requests use up the quota too; a new day restores it."""
    with _client(limited) as client:
        assert httpx.get(limited.base_url + "/conversation").status_code == 401
        assert client.get("/conversation").status_code == 200
        assert client.get("/conversation").status_code == 429  # the bucket, emptied by two
        clock.now += 10
        assert client.get("/conversation").status_code == 200
        clock.now += 10
        assert client.get("/conversation").status_code == 200  # the 5th of the day
        clock.now += 10
        refused = client.get("/conversation")
        assert refused.status_code == 429
        assert refused.json()["message"].endswith("daily request quota exceeded")
        assert int(refused.headers["retry-after"]) == 86400 - 30
        assert limited.stats()["quota_used_today"] == 6
        limited.advance_day()
        assert client.get("/conversation").status_code == 200


def test_quota_rolls_over_after_a_day(clock: FakeClock) -> None:
    """The daily quota is whole again 24 hours after the day started."""
    with running_sandbox(SandboxConfig(daily_quota=1), generate=1, clock=clock) as sandbox:
        with _client(sandbox) as client:
            assert client.get("/conversation").status_code == 200
            assert client.get("/conversation").status_code == 429
            clock.now += 86400
            assert client.get("/conversation").status_code == 200


@pytest.mark.parametrize(
    ("switch", "header"),
    [
        ("ratelimit_limit_header", "ratelimit-limit"),
        ("ratelimit_remaining_header", "ratelimit-remaining"),
        ("ratelimit_reset_header", "ratelimit-reset"),
        ("retry_after_header", "retry-after"),
    ],
)
def test_each_rate_limit_header_can_be_switched_off(
    limited: Sandbox, switch: str, header: str
) -> None:
    """Each ratelimit header and Retry-After is sent by default and absent when switched off."""
    with _client(limited) as client:
        client.get("/conversation")
        client.get("/conversation")
        assert header in client.get("/conversation").headers
        limited.configure(**{switch: False})
        refused = client.get("/conversation")
        assert refused.status_code == 429 and header not in refused.headers


def test_headers_can_describe_the_daily_window(limited: Sandbox) -> None:
    """ratelimit_window=day: ratelimit-limit is the daily quota."""
    limited.configure(ratelimit_window="day")
    with _client(limited) as client:
        response = client.get("/conversation")
    assert response.headers["ratelimit-limit"] == "5"
    assert response.headers["ratelimit-remaining"] == "4"
    assert response.headers["ratelimit-reset"] == "86400"


def test_no_limits_no_headers(sandbox_client: httpx.Client) -> None:
    """Without limits configured there is nothing to describe: no ratelimit headers."""
    assert "ratelimit-limit" not in sandbox_client.get("/conversation").headers


def test_one_second_window_is_sliding(clock: FakeClock) -> None:
    """The busiest 1-second window is found wherever it falls, not in fixed buckets."""
    with running_sandbox(generate=1, clock=clock) as sandbox:
        with _client(sandbox) as client:
            for moment in (0.0, 0.6, 0.9, 1.05, 1.2, 2.5, 5.0):
                clock.now = 1000.0 + moment
                client.get("/conversation")
        # Fixed buckets [0,1) and [1,2) hold 3 and 2; the window (0.2, 1.2] holds 4.
        assert sandbox.stats()["max_requests_in_1s"] == 4


def test_one_second_window_excludes_its_left_edge(clock: FakeClock) -> None:
    """Requests exactly 1 s apart are in different windows."""
    with running_sandbox(generate=1, clock=clock) as sandbox:
        with _client(sandbox) as client:
            for moment in (0.0, 1.0, 2.0, 3.0):
                clock.now = 1000.0 + moment
                client.get("/conversation")
        assert sandbox.stats()["max_requests_in_1s"] == 1


def test_window_counts_refused_requests(limited: Sandbox) -> None:
    """Refused requests still arrive at the server and count in the window.

    The gateway limits before it checks the key, so a request without one is refused too.
    """
    with _client(limited) as client:
        for _ in range(4):
            client.get("/conversation")
    assert httpx.get(limited.base_url + "/conversation").status_code == 429
    stats = limited.stats()
    assert stats["max_requests_in_1s"] == 5 and stats["rate_limited"] == 3
