"""The kubelet's image pull back-off, as arithmetic: what a stuck pod costs, what we save.

Kubelet: 10 s initial, doubling per failure, capped at 300 s, keyed by pod UID and image.
So attempts grow with the logarithm of elapsed time at first and linearly once capped.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL = 10.0
CAP = 300.0


def schedule(until: float, *, initial: float = INITIAL, cap: float = CAP) -> list[float]:
    """Offsets (seconds after the first failure) at which the kubelet pulls again."""
    out: list[float] = [0.0]
    t, step = 0.0, initial
    while True:
        t += step
        if t > until:
            return out
        out.append(t)
        step = min(step * 2, cap)


@dataclass(frozen=True)
class BackoffState:
    attempts: int  # pulls made so far, the first failed one included
    current_step: float  # the back-off the kubelet is waiting out now
    next_attempt_in: float  # seconds until the next pull
    lost: float  # seconds the workload has been unable to start


def state(elapsed: float, *, initial: float = INITIAL, cap: float = CAP) -> BackoffState:
    """Where the kubelet stands ``elapsed`` seconds after the first failed pull."""
    elapsed = max(0.0, elapsed)
    times = schedule(elapsed, initial=initial, cap=cap)
    n = len(times)
    step = min(initial * 2 ** (n - 1), cap)
    next_at = times[-1] + step
    return BackoffState(n, step, next_at - elapsed, elapsed)


def saved_by_recreation(elapsed: float, *, initial: float = INITIAL, cap: float = CAP) -> float:
    """Waiting avoided by recreating a pod now instead of letting its back-off run out."""
    return state(elapsed, initial=initial, cap=cap).next_attempt_in
