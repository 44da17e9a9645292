"""Per-host politeness: a concurrency limit, a token bucket and the 429 back-off window.

The prober must never become the reason a registry rate-limits a cluster, so every
request to a host passes its gate, and a host that answered 429 is left alone until its
``Retry-After`` (or an exponential default) has passed.
"""

from __future__ import annotations

import asyncio
import email.utils
import time


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` (delta-seconds or HTTP-date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 86400))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - now, 86400.0))


class HostGate:
    """Per-host limiter: a semaphore, a token bucket, and the 429 back-off window."""

    def __init__(self, host: str, concurrency: int, rate: float, burst: int) -> None:
        self.host = host
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._rate = max(rate, 0.001)
        self._burst = float(max(1, burst))
        self._tokens = self._burst
        self._last = time.monotonic()
        self._blocked_until = 0.0
        self._failures = 0
        self._lock = asyncio.Lock()

    def backoff_remaining(self) -> float:
        return max(0.0, self._blocked_until - time.monotonic())

    async def __aenter__(self) -> HostGate:
        await self._sem.acquire()
        try:
            async with self._lock:
                while True:
                    now = time.monotonic()
                    self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                    self._last = now
                    if self._tokens >= 1.0:
                        self._tokens -= 1.0
                        break
                    await asyncio.sleep((1.0 - self._tokens) / self._rate)
        except BaseException:
            self._sem.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._sem.release()

    def note_429(self, retry_after: float | None) -> float:
        """Start (or extend) the back-off window; exponential when no Retry-After."""
        self._failures += 1
        delay = retry_after if retry_after is not None else min(300.0, 2.0**self._failures)
        self._blocked_until = max(self._blocked_until, time.monotonic() + delay)
        return delay

    def note_ok(self) -> None:
        self._failures = 0


class HostGates:
    """One gate per host, made on first use with the configured limits."""

    def __init__(self, concurrency: int, rate: float, burst: int) -> None:
        self._limits = (concurrency, rate, burst)
        self._gates: dict[str, HostGate] = {}

    def __call__(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = HostGate(host, *self._limits)
        return gate
