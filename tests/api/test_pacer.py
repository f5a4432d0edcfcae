"""The pacer on a virtual clock (trio's MockClock), so rates and waits are exact."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from trio.testing import MockClock

from pipeline.api.pacer import Pacer


def run_virtual(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


def start_times(rate: float | None, workers: int, requests_each: int) -> list[float]:
    starts: list[float] = []

    async def main() -> None:
        pacer = Pacer(rate)

        async def worker() -> None:
            for _ in range(requests_each):
                await pacer.wait()
                starts.append(anyio.current_time())
                await anyio.sleep(0.01)  # the request itself

        async with anyio.create_task_group() as tasks:
            for _ in range(workers):
                tasks.start_soon(worker)

    run_virtual(main)
    return sorted(starts)


def test_no_burst_at_start_up() -> None:
    """Four workers at 2 requests/s: the second request starts half a second after the first."""
    starts = start_times(2.0, workers=4, requests_each=1)
    assert starts[1] - starts[0] == pytest.approx(0.505)


@pytest.mark.parametrize("rate", [0.5, 2.0, 10.0, 100.0])
def test_every_gap_is_at_least_the_interval(rate: float) -> None:
    """No two starts are closer than 1/rate, and the achieved rate is within 2% of the target."""
    starts = start_times(rate, workers=8, requests_each=25)
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 1 / rate - 1e-9
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    assert rate * 0.98 <= achieved <= rate


def test_unlimited_rate_never_waits() -> None:
    """With no rate, every worker starts at once."""
    starts = start_times(None, workers=5, requests_each=1)
    assert starts[-1] - starts[0] == 0


def test_hold_pauses_every_worker() -> None:
    """A Retry-After of 3 s held by one worker delays the next start of every worker."""
    starts: list[float] = []

    async def main() -> None:
        pacer = Pacer(None)
        await pacer.wait()
        started = anyio.current_time()
        pacer.hold(3.0)

        async def worker() -> None:
            await pacer.wait()
            starts.append(anyio.current_time() - started)

        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(worker)

    run_virtual(main)
    assert starts == [pytest.approx(3.0)] * 3


def test_hold_arriving_while_a_worker_sleeps_is_honoured() -> None:
    """A hold that arrives while a worker already waits for its slot pushes that slot back."""
    starts: list[float] = []

    async def main() -> None:
        pacer = Pacer(1.0)
        await pacer.wait()
        origin = anyio.current_time()

        async def late_worker() -> None:
            await pacer.wait()
            starts.append(anyio.current_time() - origin)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(late_worker)
            await anyio.sleep(0.2)
            pacer.hold(5.0)

    run_virtual(main)
    assert starts == [pytest.approx(5.2)]


def test_a_429_holds_every_worker_and_halves_the_rate() -> None:
    """slow_down: nobody starts inside the Retry-After window, then the rate is halved."""
    starts: list[float] = []

    async def main() -> None:
        pacer = Pacer(4.0)
        for _ in range(4):
            await pacer.wait()
        refused_at = anyio.current_time()
        pacer.slow_down(retry_after=2.0)
        pacer.slow_down(retry_after=2.0)  # a second 429 from the same burst: one signal
        assert pacer.rate == 2.0
        for _ in range(3):
            await pacer.wait()
            starts.append(anyio.current_time() - refused_at)

    run_virtual(main)
    assert starts[0] == pytest.approx(2.0)
    assert starts[1] - starts[0] == pytest.approx(0.505)


def test_successes_climb_back_to_the_ceiling_and_no_further() -> None:
    """After a slow-down, each success adds a little rate back, up to --rate."""

    async def main() -> None:
        pacer = Pacer(2.0)
        await pacer.wait()
        pacer.slow_down(retry_after=0)
        assert pacer.rate == 0.5
        for _ in range(100):
            pacer.succeeded()
        assert pacer.rate == 2.0

    run_virtual(main)


def test_an_unlimited_pacer_slows_to_half_what_it_was_sending() -> None:
    """Unlimited: a 429 sets a rate of half the starts seen in the last second."""

    async def main() -> None:
        pacer = Pacer(None)
        for _ in range(20):
            await pacer.wait()
            await anyio.sleep(0.04)
        pacer.slow_down(retry_after=None)
        assert pacer.rate == pytest.approx(10.0)

    run_virtual(main)
