"""SingleFlight: one run of the work for every caller that asks while it runs."""

import asyncio

import pytest

from shop.core.singleflight import SingleFlight


async def test_concurrent_callers_share_one_run_and_later_ones_start_another() -> None:
    flights: SingleFlight[int] = SingleFlight()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return runs

    assert await asyncio.gather(*(flights.do("k", work) for _ in range(10))) == [1] * 10
    assert not flights.running("k")
    assert await flights.do("k", work) == 2


async def test_the_error_reaches_every_caller_and_the_next_call_runs_again() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("database down")

    results = await asyncio.gather(
        *(flights.do("k", failing) for _ in range(3)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, ConnectionError) for r in results)
    with pytest.raises(ConnectionError):
        await flights.do("k", failing)
    assert calls == 2


async def test_a_cancelled_caller_leaves_the_run_to_the_others() -> None:
    """A request cut off by its deadline must not cancel the query others wait for."""
    flights: SingleFlight[str] = SingleFlight()
    finished = asyncio.Event()

    async def work() -> str:
        await asyncio.sleep(0.1)
        finished.set()
        return "done"

    impatient = asyncio.ensure_future(flights.do("k", work))
    patient = asyncio.ensure_future(flights.do("k", work))
    await asyncio.sleep(0.01)
    impatient.cancel()

    assert await patient == "done"
    assert impatient.cancelled()
    assert finished.is_set()


async def test_keys_are_separate() -> None:
    flights: SingleFlight[str] = SingleFlight()

    async def named(name: str) -> str:
        await asyncio.sleep(0.01)
        return name

    a, b = await asyncio.gather(
        flights.do("a", lambda: named("a")), flights.do("b", lambda: named("b"))
    )
    assert (a, b) == ("a", "b")
