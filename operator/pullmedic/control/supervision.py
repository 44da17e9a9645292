"""Supervised background loops: nothing the operator runs in the background can die or
hang unseen.

Each loop body runs under a deadline; any failure (an exception of any type, or the
deadline) restarts the loop after a back-off, counts in
``pullmedic_loop_restarts_total{loop}``, and is logged once per failure streak. Every
completed run is a tick; liveness reads the ticks.

The back-off doubles from BACKOFF_MIN to BACKOFF_MAX, and starts over after a completed
run, after a run that lasted BACKOFF_RESET before failing (a watch never completes; the
rule is client-go's reflector's), and when the API server returns. A failure that says when to
try again (an API server's 429 with Retry-After, carried as ``retry_after``) waits that
long instead: a kube-apiserver just back from a restart answers 429 for a few seconds while
its storage initializes, and doubling through those left the pod watch asleep for up to
half a minute after the API had returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")


@dataclass
class Loop:
    name: str
    body: Callable[[], Awaitable[object]]
    interval: float
    deadline: float  # one run of the body is cancelled after this long
    last_tick: float = 0.0
    streak: int = 0  # consecutive failures: logged once, "recovered" when it ends
    tries: int = 0  # failures the back-off counts (reset also when the API returns)
    started: float = 0.0  # when the current run of the body began
    restarts: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    silence: float | None = None  # long-running bodies: the longest gap between heartbeats

    @property
    def budget(self) -> float:
        """Longest healthy silence: a wait, a full run, and the longest back-off."""
        if self.silence is not None:
            return self.silence + Supervisor.BACKOFF_MAX
        return self.interval + self.deadline + Supervisor.BACKOFF_MAX


class Supervisor:
    BACKOFF_MIN = 1.0
    BACKOFF_MAX = 60.0
    BACKOFF_RESET = 120.0  # a run this long before failing starts the back-off over

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.loops: dict[str, Loop] = {}
        self._wake: asyncio.Event | None = None  # made in the running loop

    def wake(self) -> None:
        """The API server answers again: every back-off ends now, and the next one starts
        from BACKOFF_MIN. A loop that failed because the API was away must not sleep past
        its return (up to BACKOFF_MAX), nor pay for the outage in its next back-off."""
        for loop in self.loops.values():
            loop.tries = 0
        if self._wake is not None:
            self._wake.set()
            self._wake = asyncio.Event()  # the woken sleepers hold the old one

    async def _back_off(self, pause: float) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause):
                await self._wake.wait()

    def every(
        self,
        name: str,
        interval: float,
        body: Callable[[], Awaitable[object]],
        *,
        deadline: float | None = None,
    ) -> Loop:
        loop = Loop(name, body, interval, deadline if deadline is not None else max(30.0, interval))
        self.loops[name] = loop
        return loop

    def forever(self, name: str, body: Callable[[], Awaitable[object]], *, silence: float) -> Loop:
        """A body that runs until it fails (a watch): restarted like any loop; healthy
        while it calls ``beat(name)`` at least every ``silence`` seconds."""
        loop = Loop(name, body, 0.0, float("inf"), silence=silence)
        self.loops[name] = loop
        return loop

    def beat(self, name: str) -> None:
        """A long-running body is working: a tick, and the end of its failure streak (its
        next failure is logged again; the back-off keeps counting until BACKOFF_RESET)."""
        loop = self.loops.get(name)
        if loop is not None:
            loop.last_tick = self.clock()
            self._recovered(loop)

    @staticmethod
    def _recovered(loop: Loop) -> None:
        if loop.streak:
            log.info("loop %s recovered after %d failure(s)", loop.name, loop.streak)
        loop.streak = 0

    def pause(self, loop: Loop, failed: BaseException | str) -> float:
        """How long to wait before running a loop that failed again."""
        retry_after = getattr(failed, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return float(min(self.BACKOFF_MAX, max(retry_after, 0.1)))
        return float(min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** (loop.tries - 1)))

    def start(self) -> None:
        aio = asyncio.get_running_loop()
        for loop in self.loops.values():
            loop.last_tick = self.clock()
            loop.task = aio.create_task(self._run(loop), name=f"loop {loop.name}")

    async def stop(self) -> None:
        tasks = [lp.task for lp in self.loops.values() if lp.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, loop: Loop) -> None:
        first = True
        while True:
            try:
                if not first:
                    await asyncio.sleep(loop.interval)
                first = False
                loop.started = self.clock()
                async with asyncio.timeout(
                    None if loop.deadline == float("inf") else loop.deadline
                ):
                    await loop.body()
                if loop.silence is not None:
                    raise RuntimeError("ended")  # a forever body that returns is restarted
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # stopping
                failed: BaseException | str = "cancelled from inside"
            except TimeoutError:
                failed = f"no result within {loop.deadline:.0f}s"
            except Exception as e:
                failed = e
            else:
                self._recovered(loop)
                loop.tries = 0
                loop.last_tick = self.clock()
                continue
            if self.clock() - loop.started >= self.BACKOFF_RESET:
                loop.tries = 0  # it ran long enough: this failure is not part of a series
            loop.streak += 1
            loop.tries += 1
            loop.restarts += 1
            metrics.LOOP_RESTARTS.labels(loop=loop.name).inc()
            pause = self.pause(loop, failed)
            if loop.streak == 1:  # once per streak: a dead API server must not flood logs
                if isinstance(failed, BaseException):
                    log.error(
                        "loop %s failed; restarting with back-off",
                        loop.name,
                        exc_info=(type(failed), failed, failed.__traceback__),
                    )
                else:
                    log.error("loop %s failed (%s); restarting with back-off", loop.name, failed)
            await self._back_off(pause)
            first = True  # the back-off was the wait: run again now, not after an interval

    def stalled(self) -> list[str]:
        """Loops that have not completed a run within their budget, or whose task ended."""
        now = self.clock()
        out = []
        for lp in self.loops.values():
            if lp.task is not None and lp.task.done():
                out.append(f"loop {lp.name} is not running")
            elif now - lp.last_tick > lp.budget:
                out.append(f"loop {lp.name} has not ticked for {now - lp.last_tick:.0f}s")
        return out
