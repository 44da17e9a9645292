"""The registry ``host`` label: a fixed number of values, whatever hosts tenants name."""

from __future__ import annotations

import pytest

from pullmedic.probe.quota import Quotas
from pullmedic.telemetry import metrics


@pytest.mark.parametrize(
    ("limit", "hosts", "want"),
    [
        (2, ["a", "b", "c"], ["a", "b", "other"]),
        (2, ["a", "a", "b", "a", "c", "b"], ["a", "a", "b", "a", "other", "b"]),
        (0, ["a"], ["other"]),
        (3, ["a", "b"], ["a", "b"]),
    ],
    ids=["past-the-cap", "repeats-keep-their-label", "no-room", "under-the-cap"],
)
def test_the_first_hosts_keep_their_label_and_later_ones_share_other(
    limit: int, hosts: list[str], want: list[str]
) -> None:
    labels = metrics.HostLabels(limit)
    assert [labels(h) for h in hosts] == want


def test_a_thousand_hosts_make_at_most_the_cap_of_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "host_label", metrics.HostLabels(5))
    quotas = Quotas(reserve=0.2)
    headers = {"ratelimit-limit": "100;w=60", "ratelimit-remaining": "50;w=60"}
    for i in range(1000):
        quotas.observe(f"r{i}.example", headers)
    gauges = {
        s.labels["host"]
        for m in metrics.REGISTRY_QUOTA_REMAINING.collect()
        for s in m.samples
        if s.labels["host"].startswith("r") and s.labels["host"].endswith(".example")
    }
    assert gauges == {f"r{i}.example" for i in range(5)}  # no gauge for hosts past the cap
    assert metrics.host_label("r999.example") == metrics.OTHER_HOST
