"""SingleFlight on its own: no PostgreSQL, probes are plain coroutines driven by events."""

from __future__ import annotations

import asyncio

import pytest

from service.db.singleflight import SingleFlight


class Probe:
    """A probe that answers when told to, counting its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.answer = "ok"

    async def __call__(self) -> str:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        return self.answer


def flight(
    probe: Probe, deadline: float = 10, results: list[str] | None = None
) -> SingleFlight[str]:
    record = results.append if results is not None else (lambda result: None)
    return SingleFlight(
        probe, deadline=deadline, on_timeout="timeout", on_error="error", on_result=record
    )


async def test_concurrent_callers_share_one_probe() -> None:
    probe, results = Probe(), []
    single = flight(probe, results=results)
    callers = [asyncio.ensure_future(single.run()) for _ in range(100)]
    await probe.started.wait()
    probe.release.set()
    assert await asyncio.gather(*callers) == ["ok"] * 100
    assert probe.runs == 1
    assert results == ["ok"]  # reported once per flight, not per caller


async def test_a_finished_result_is_never_reused() -> None:
    probe = Probe()
    probe.release.set()
    single = flight(probe)
    assert await single.run() == "ok"
    probe.answer = "changed"
    assert await single.run() == "changed"
    assert probe.runs == 2


async def test_the_deadline_answers_and_an_overrunning_probe_is_not_doubled() -> None:
    probe, results = Probe(), []
    single = flight(probe, deadline=0.01, results=results)
    assert await single.run() == "timeout"  # the probe hangs until released
    assert results == ["timeout"]
    # The next flight waits for the probe still running instead of starting a second one.
    assert await single.run() == "timeout"
    assert probe.runs == 1
    assert results == ["timeout", "timeout"]
    probe.release.set()


async def test_the_overrunning_probes_result_answers_the_next_flight() -> None:
    probe = Probe()
    single = SingleFlight(probe, deadline=0.01, on_timeout="timeout", on_error="error")
    assert await single.run() == "timeout"
    single.deadline = 10  # the next flight waits for the running probe
    late = asyncio.ensure_future(single.run())
    await asyncio.sleep(0)
    probe.release.set()
    assert await late == "ok"
    assert probe.runs == 1


async def test_a_failing_probe_answers_on_error() -> None:
    async def broken() -> str:
        raise RuntimeError("boom")

    results: list[str] = []
    single = SingleFlight(
        broken, deadline=10, on_timeout="timeout", on_error="error", on_result=results.append
    )
    assert await single.run() == "error"
    assert results == ["error"]


async def test_cancel_answers_none_and_stops_the_probe() -> None:
    probe, results = Probe(), []
    single = flight(probe, results=results)
    callers = [asyncio.ensure_future(single.run()) for _ in range(3)]
    await probe.started.wait()
    single.cancel()
    assert await asyncio.gather(*callers) == [None, None, None]
    assert results == []  # a cancelled check reports nothing


async def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    probe = Probe()
    single = flight(probe)
    quitter = asyncio.ensure_future(single.run())
    stayer = asyncio.ensure_future(single.run())
    await probe.started.wait()
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    probe.release.set()
    assert await stayer == "ok"
