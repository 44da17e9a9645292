"""The supervisor's back-off: how long a failed loop waits, and when that starts over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pullmedic.control.supervision import Loop, Supervisor
from pullmedic.kube.podwatch import Busy


async def _noop() -> None:
    return None


@pytest.mark.parametrize(
    ("tries", "failed", "pause"),
    [
        (1, ConnectionRefusedError(), 1.0),
        (2, ConnectionRefusedError(), 2.0),
        (5, ConnectionRefusedError(), 16.0),
        (9, ConnectionRefusedError(), 60.0),  # capped at BACKOFF_MAX
        (5, Busy(1.0), 1.0),  # the API server said when: no doubling
        (1, Busy(0.0), 0.1),  # never a busy loop
        (1, Busy(300.0), 60.0),
        (3, "no result within 30s", 4.0),  # a missed deadline is a failure like any
    ],
    ids=["first", "second", "fifth", "capped", "busy", "busy-now", "busy-long", "deadline"],
)
def test_the_pause_doubles_unless_the_failure_says_when(
    tries: int, failed: BaseException | str, pause: float
) -> None:
    loop = Loop("watch", _noop, 0.0, float("inf"), tries=tries)
    assert Supervisor().pause(loop, failed) == pause


async def until(check: Callable[[], bool], timeout: float = 2.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_the_apis_return_starts_the_back_off_over() -> None:
    """Failures while the API was away doubled the back-off; after its return, the next
    failure (a restarted apiserver's 429s while its storage initializes) waits
    BACKOFF_MIN again, not the doubled pause the outage had reached."""
    sup = Supervisor()
    sup.BACKOFF_MIN = 0.001  # type: ignore[misc]
    away = {"on": True}
    runs = {"n": 0}

    async def watch() -> None:
        runs["n"] += 1
        if away["on"]:
            raise ConnectionRefusedError("the API server is away")
        await asyncio.Event().wait()  # a watch: runs until it fails

    loop = sup.forever("watch", watch, silence=60.0)
    sup.start()
    try:
        await until(lambda: loop.tries >= 6)
        assert sup.pause(loop, ConnectionRefusedError()) >= 0.001 * 2**5
        away["on"] = False
        sup.wake()
        assert loop.tries == 0 and sup.pause(loop, ConnectionRefusedError()) < 0.002 * 2
        n = runs["n"]
        await until(lambda: runs["n"] > n)  # running again, and now it holds
        assert loop.streak >= 6  # still one streak: no heartbeat has come yet
        sup.beat("watch")
        assert loop.streak == 0
    finally:
        await sup.stop()


async def test_a_long_run_before_a_failure_starts_the_back_off_over() -> None:
    """A watch fails now and then (its connection drops): a failure after BACKOFF_RESET
    of running is a first failure again, as client-go's reflector counts them, not the
    next step of every failure since the operator started."""
    now = {"t": 0.0}
    sup = Supervisor(clock=lambda: now["t"])
    sup.BACKOFF_MIN = 0.001  # type: ignore[misc]
    gate = {"fail": asyncio.Event()}
    runs = {"n": 0}

    async def watch() -> None:
        runs["n"] += 1
        if runs["n"] <= 4:
            raise ConnectionResetError("dropped at once")
        if runs["n"] == 5:
            await gate["fail"].wait()
            raise ConnectionResetError("dropped after a long run")
        await asyncio.Event().wait()  # then it holds

    loop = sup.forever("watch", watch, silence=600.0)
    sup.start()
    try:
        await until(lambda: runs["n"] == 5)
        assert loop.tries == 4
        now["t"] += sup.BACKOFF_RESET
        gate["fail"].set()
        await until(lambda: runs["n"] >= 6)
        assert loop.tries == 1 and loop.restarts == 5
    finally:
        await sup.stop()
