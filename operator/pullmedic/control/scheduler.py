"""When each group is decided: debounce, one pending wake-up per group, backed-off
retries and rechecks, and a hard deadline so no decision can hold its group forever.

Knows nothing of Kubernetes or registries: it runs ``decide(group)`` and reads how it ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pullmedic.core.grouping import Group, GroupKey, Groups

log = logging.getLogger("pullmedic")


class Postpone(Exception):
    """Not enough known yet to decide safely (e.g. a namespace's labels); retry soon."""


@dataclass(frozen=True)
class SchedulerSettings:
    debounce: float = 0.25  # gather sibling pods of one owner before deciding
    recheck_after: float = 30.0  # re-diagnose a group still stuck after this long
    decision_timeout: float = 120.0  # a decision still running after this is cancelled
    postpone_base: float = 0.5  # first retry after a Postpone; doubles per attempt
    postpone_max: float = 60.0
    retry_base: float = 2.5  # first retry after a failure or timeout; doubles per attempt
    retry_max: float = 300.0


class Scheduler:
    def __init__(
        self,
        groups: Groups,
        decide: Callable[[Group], Awaitable[None]],
        settings: SchedulerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.groups = groups
        self.decide = decide
        self.settings = settings
        self.clock = clock
        self.timeouts = 0  # decisions cancelled at their deadline (a health signal)
        self.paused = False  # a standby: groups are kept warm, never decided

    def pause(self) -> None:
        self.paused = True
        self.cancel_all()

    def resume(self) -> None:
        """Decide every known group now: a new leader acts on what it watched."""
        self.paused = False
        for g in list(self.groups.groups.values()):
            if g.pods:
                self.schedule(g, force=True)

    def schedule(self, group: Group, *, force: bool = False) -> None:
        if self.paused:
            return
        if group.task is not None and not group.task.done():
            group.again = group.again or force
            return
        now = self.clock()
        since = now - group.handled_at
        due = group.recheck_in(self.settings.recheck_after)
        if group.handled_at and since < due and not force:
            if group.timer is None:  # stuck pods may send no event for minutes (back-off)
                self._wake(group, due - since)
            return
        self._wake(group, None)
        group.started_at = now
        group.members_taken = False
        group.task = asyncio.get_running_loop().create_task(
            self._handle(group), name=f"decide {'/'.join(group.key)}"
        )

    def _wake(self, group: Group, delay: float | None, *, force: bool = False) -> None:
        """Keep exactly one pending wake-up per group (None: cancel it)."""
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if delay is not None:
            group.timer = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._fire, group.key, force
            )

    def _fire(self, key: GroupKey, force: bool) -> None:
        group = self.groups.groups.get(key)
        if group is None:
            return
        group.timer = None  # this is the handle that fired: _wake keeps only one
        if group.pods:
            self.schedule(group, force=force)

    async def _handle(self, group: Group) -> None:
        retry_in: float | None = None
        s = self.settings
        try:
            await asyncio.sleep(s.debounce)
            async with asyncio.timeout(s.decision_timeout):
                await self.decide(group)
        except Postpone as why:
            group.failures += 1
            retry_in = min(s.postpone_max, s.postpone_base * 2**group.failures)
            level = logging.INFO if group.failures < 5 else logging.WARNING
            log.log(level, "postponing %s: %s", "/".join(group.key), why)
        except TimeoutError:
            group.failures += 1
            self.timeouts += 1
            retry_in = min(s.retry_max, s.retry_base * 2**group.failures)
            log.warning(
                "deciding %s took over %.1fs; cancelled, retrying in %.1fs",
                "/".join(group.key),
                s.decision_timeout,
                retry_in,
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # any bug or fault: the group is retried, never lost
            group.failures += 1
            retry_in = min(s.retry_max, s.retry_base * 2**group.failures)
            log.exception("handling %s failed; retrying in %.1fs", "/".join(group.key), retry_in)
        else:
            group.failures = 0
        group.handled_at = self.clock()
        if not group.pods:
            return
        if group.again:
            group.again = False
            self._wake(group, s.debounce, force=True)
        elif retry_in is not None:
            self._wake(group, retry_in, force=True)
        else:
            self._wake(group, group.recheck_in(s.recheck_after))

    def retry_now(self) -> None:
        """Decide now every group waiting out a failure's back-off (the API is back)."""
        for g in list(self.groups.groups.values()):
            if g.failures and g.pods and (g.task is None or g.task.done()):
                self._wake(g, 0.0, force=True)

    def oldest_running(self) -> float:
        """Seconds the longest-running decision has been going (0 when none)."""
        now = self.clock()
        ages = [
            now - g.started_at
            for g in self.groups.groups.values()
            if g.task is not None and not g.task.done()
        ]
        return max(ages, default=0.0)

    def cancel_all(self) -> None:
        for g in self.groups.groups.values():
            if g.timer is not None:
                g.timer.cancel()
                g.timer = None
            if g.task is not None and not g.task.done():
                g.task.cancel()
