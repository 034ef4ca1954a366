"""The idle trim: heaps are given back after a quiet period, never while requests keep coming."""

from __future__ import annotations

import asyncio

import pytest

from service.allocator import IdleTrim, trim_heaps

IDLE = 0.05


def test_trim_heaps_runs_here() -> None:
    assert isinstance(trim_heaps(), bool)  # glibc here; False (not an error) without it


def _skip_without_glibc(idle: IdleTrim) -> None:
    if not idle._enabled:
        pytest.skip("no glibc malloc_trim in this C library")


async def _request(idle: IdleTrim, seconds: float = 0.0) -> None:
    idle.enter()
    await asyncio.sleep(seconds)
    idle.leave()


def test_a_quiet_period_after_a_burst_trims_once() -> None:
    async def scenario() -> int:
        idle = IdleTrim(IDLE)
        _skip_without_glibc(idle)
        await asyncio.gather(*(_request(idle, 0.001) for _ in range(20)))
        await asyncio.sleep(IDLE * 6)  # one or two quiet periods, then the trim thread
        return idle.trims

    assert asyncio.run(scenario()) == 1


def test_steady_traffic_with_gaps_is_not_idle() -> None:
    async def scenario() -> int:
        idle = IdleTrim(IDLE)
        _skip_without_glibc(idle)
        for _ in range(30):  # a request every IDLE / 5: busy drops to zero between them
            await _request(idle)
            await asyncio.sleep(IDLE / 5)
        trims = idle.trims
        idle.cancel()
        return trims

    assert asyncio.run(scenario()) == 0


def test_no_trim_while_a_request_is_in_flight() -> None:
    async def scenario() -> int:
        idle = IdleTrim(IDLE)
        _skip_without_glibc(idle)
        await _request(idle)
        idle.enter()  # a long request starts before the quiet period ends
        await asyncio.sleep(IDLE * 4)
        trims = idle.trims
        idle.leave()
        idle.cancel()
        return trims

    assert asyncio.run(scenario()) == 0
