"""The registries' pull quotas, so the probe leaves the nodes theirs.

Docker Hub counts manifest GETs as pulls (HEAD is free) and says how many are left on
every answer: ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600``
(a count, then the window in seconds). A host without these headers is not limited.
Once a host's remaining count is down to the reserve, manifest GETs to it are withheld
until a later answer (a HEAD, say) shows the quota back above it or the window passes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from pullmedic.telemetry import metrics

QUOTA_NOTE = "quota reserved for the nodes"


@dataclass(frozen=True)
class Withheld:
    """A manifest GET not sent to ``host``, and the quota that held it back."""

    host: str
    remaining: int
    limit: int

    @property
    def reason(self) -> str:
        return f"{QUOTA_NOTE} (ratelimit-remaining {self.remaining} of {self.limit})"


class QuotaReserved(Exception):
    """Not sent: a manifest GET would spend pulls the nodes need."""

    def __init__(self, withheld: Withheld) -> None:
        self.withheld = withheld
        super().__init__(f"{withheld.host}: {withheld.reason}")


def parse_ratelimit(value: str | None) -> tuple[int, float | None] | None:
    """``N`` or ``N;w=S`` (more parameters allowed) as (N, window seconds); None if neither."""
    if not value:
        return None
    head, *params = value.split(";")
    head = head.strip()
    if not head.isdigit():
        return None
    window: float | None = None
    for param in params:
        name, _, arg = param.strip().partition("=")
        if name.strip().lower() == "w" and arg.strip().isdigit():
            window = float(arg.strip())
    return int(head), window


@dataclass(frozen=True)
class Quota:
    """A host's last word on its quota, and until when it holds (its window)."""

    limit: int
    remaining: int
    until: float  # monotonic

    def reserved(self, reserve: float) -> bool:
        return self.remaining <= self.limit * reserve


class Quotas:
    """Per registry host: what the last answer carrying the headers said."""

    def __init__(self, reserve: float, default_window: float = 21600.0) -> None:
        self.reserve = reserve
        self.default_window = default_window
        self._hosts: dict[str, Quota] = {}

    def observe(self, host: str, headers: Mapping[str, str]) -> None:
        limit = parse_ratelimit(headers.get("ratelimit-limit"))
        remaining = parse_ratelimit(headers.get("ratelimit-remaining"))
        if limit is None or remaining is None:
            return
        window = remaining[1] or limit[1] or self.default_window
        self._hosts[host] = Quota(limit[0], remaining[0], time.monotonic() + window)
        label = metrics.host_label(host)
        if label != metrics.OTHER_HOST:  # one gauge for many hosts would mean none of them
            metrics.REGISTRY_QUOTA_REMAINING.labels(host=label).set(remaining[0])

    def get(self, host: str) -> Quota | None:
        quota = self._hosts.get(host)
        if quota is not None and quota.until <= time.monotonic():
            del self._hosts[host]  # the window has passed: the count has been reset
            return None
        return quota

    def check_get(self, host: str) -> None:
        """Raise QuotaReserved if a manifest GET to ``host`` would eat into the reserve."""
        quota = self.get(host)
        if quota is not None and quota.reserved(self.reserve):
            metrics.REGISTRY_GETS_WITHHELD.labels(host=metrics.host_label(host)).inc()
            raise QuotaReserved(Withheld(host, quota.remaining, quota.limit))
