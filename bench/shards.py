"""Shards: memory per replica and detection latency with 1, 2 and 4 shards, side by side.

One sandbox (API server with ShardedListAndWatch on, emulated node) and seven operator
processes at once: one unsharded replica, two replicas of a 2-shard split and four of a
4-shard split, each with ``--shards N --shard-index I``. The cluster grows in steps of
healthy pods (100-replica Deployments of a cached image), then per step 1 % of the growth
fails (5-replica Deployments, a missing tag each; no policy selects them, so pullmedic
diagnoses and reports). Per replica and step: settled RSS, and the pods in its slice;
per split: detection latency (first ErrImagePull seen by the bench -> the owning shard's
engine has the pod -> its diagnosis is done) and whether each failing workload was
decided by exactly one replica of the split.

``BENCH_SHARD_STEPS`` (default ``1000,10000,50000``) sets the cluster sizes;
``BENCH_STEP_TIMEOUT`` (s, default 2700) bounds one step's bring-up: a step that does not
come up in time is measured as far as it got, and the run stops there.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Bench,
    PodTracker,
    cpu_breakdown,
    cpu_seconds,
    labelled,
    namespace,
    percentile,
    sandbox_pids,
    say,
    settled_rss,
    split_operators,
    start_bench,
    table,
    wait_until,
)
from sandbox.images import push_image
from sandbox.kube import deployment

NS = "shards"
PER_DEPLOYMENT = 100
FAILING_REPLICAS = 5
SPLITS = (1, 2, 4)


def run(quick: bool = False) -> dict[str, Any]:
    default = "250,1000" if quick else "1000,10000,50000"
    steps = [int(s) for s in os.environ.get("BENCH_SHARD_STEPS", default).split(",")]
    timeout = float(os.environ.get("BENCH_STEP_TIMEOUT", "2700"))
    b = start_bench("shards")
    try:
        return _run(b, steps, 10.0 if quick else 30.0, timeout)
    finally:
        b.stop()


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _scale_healthy(b: Bench, image: str, total: int, have: dict[str, int]) -> None:
    for i in range(math.ceil(total / PER_DEPLOYMENT)):
        name = f"ok-{i:04d}"
        want = min(PER_DEPLOYMENT, total - i * PER_DEPLOYMENT)
        if name not in have:
            dep = deployment(name, image, want, pull_policy="IfNotPresent")
            b.apps.create_namespaced_deployment(NS, labelled(dep, "shards"))
        elif have[name] != want:
            b.apps.patch_namespaced_deployment_scale(name, NS, {"spec": {"replicas": want}})
        have[name] = want


def _app_of_group(g: str) -> str:
    # "ReplicaSet/<ns>/<deployment>-<hash>/<container>/<image>"
    return g.split("/")[2].rsplit("-", 1)[0]


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _run(b: Bench, steps: list[int], settle: float, timeout: float) -> dict[str, Any]:
    regs = b.sb.registries
    push_image(regs.open, "shards/app", "1.0")
    image = f"{regs.open.host}/shards/app:1.0"
    namespace(b, NS)
    ops, samplers = split_operators(b, SPLITS)
    tracker = PodTracker(b, "bench=shards").start()
    b.extra.append(tracker.stop)
    time.sleep(settle)
    base = {name: settled_rss(s, 5) for name, s in samplers.items()}
    say(f"shards: idle with no pods: {base}")
    pids = sandbox_pids(b)

    have: dict[str, int] = {}
    failing: list[str] = []
    rows: list[dict[str, Any]] = []
    prev_total = 0
    stopped_at: str | None = None
    for total in steps:
        n_fail = max(FAILING_REPLICAS, round((total - prev_total) * 0.01))
        new_fail = [
            f"bad-{len(failing) + k:03d}" for k in range(math.ceil(n_fail / FAILING_REPLICAS))
        ]
        healthy = total - (len(failing) + len(new_fail)) * FAILING_REPLICAS
        say(f"shards: step {total}: {healthy} healthy pods")
        t0 = time.monotonic()
        cpu0 = cpu_seconds(pids)
        _scale_healthy(b, image, healthy, have)
        up = wait_until(lambda h=healthy: tracker.counts()["running"] >= h, timeout, every=2.0)
        t_up = time.monotonic() - t0
        bring_up = cpu_breakdown(cpu0, cpu_seconds(pids), t_up)
        running = tracker.counts()["running"]
        say(f"shards: {running} running after {t_up:.0f} s (all up: {up})")
        components = {name: _rss_mib(pid) for name, pid in pids.items()}
        if not up:
            stopped_at = (
                f"step {total}: {running} of {healthy} healthy pods running after "
                f"{t_up:.0f} s; control-plane RSS MiB {components}; CPU {bring_up}"
            )
        created = time.time()
        for name in new_fail:
            tag = f"9.9.{len(failing)}"
            failing.append(name)
            dep = deployment(name, f"{regs.open.host}/shards/app:{tag}", FAILING_REPLICAS)
            b.apps.create_namespaced_deployment(NS, labelled(dep, "shards"))

        def decided_by(n: int, since: float = created) -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for _, op in ops[n]:
                for r in op.trace():
                    if r.get("k") == "decide" and r["t"] >= since:
                        out.setdefault(_app_of_group(str(r.get("g", ""))), set()).add(op.name)
            return out

        def all_detected(names: list[str] = new_fail) -> bool:
            return all(all(a in decided_by(n) for a in names) for n in SPLITS)

        wait_until(all_detected, 300, every=1.0)
        time.sleep(settle)
        with tracker.lock:
            uids = [u for u, p in tracker.pods.items() if not p.deleting]
        row: dict[str, Any] = {
            "pods": len(uids),
            "healthy_running": tracker.counts()["running"],
            "failing_pods": len(failing) * FAILING_REPLICAS,
            "all_healthy_up": up,
            "seconds_to_bring_up": round(t_up, 1),
            "bring_up_cpu": bring_up,
            "component_rss_mib": components,
            "splits": {},
        }
        for n in SPLITS:
            replicas = []
            seen: dict[str, float] = {}
            decided: dict[str, float] = {}
            for shard, op in ops[n]:
                rss = settled_rss(samplers[op.name], 5)
                mine = sum(1 for u in uids if shard.holds(u))
                grow = (rss - base[op.name]) * 1024 / mine if mine else None
                replicas.append(
                    {
                        "replica": op.name,
                        "pods_in_slice": mine,
                        "settled_rss_mib": rss,
                        "peak_rss_mib": round(
                            max((s[1] for s in samplers[op.name].window(t0)), default=0.0), 1
                        ),
                        "growth_kib_per_pod_from_idle": _r(grow),
                    }
                )
                for r in op.trace():
                    if r["t"] < created:
                        continue
                    if r.get("k") == "seen" and r.get("app") in new_fail:
                        seen[str(r["app"])] = min(seen.get(str(r["app"]), 1e18), r["t"])
                    if r.get("k") == "decide":
                        app = _app_of_group(str(r.get("g", "")))
                        decided[app] = min(decided.get(app, 1e18), r["t"])
            first = tracker.first_fail
            to_seen = [seen[a] - first[(NS, a)] for a in new_fail if a in seen and (NS, a) in first]
            to_dec = [
                decided[a] - first[(NS, a)] for a in new_fail if a in decided and (NS, a) in first
            ]
            deciders = decided_by(n, 0.0)
            row["splits"][str(n)] = {
                "replicas": replicas,
                "settled_rss_mib_mean": round(
                    statistics.mean(r["settled_rss_mib"] for r in replicas), 1
                ),
                "settled_rss_mib_max": max(r["settled_rss_mib"] for r in replicas),
                "pods_per_replica_mean": round(
                    statistics.mean(r["pods_in_slice"] for r in replicas)
                ),
                "detect_seen_p50_s": _r(percentile(to_seen, 50)),
                "detect_seen_max_s": _r(percentile(to_seen, 100)),
                "detect_diagnosed_p50_s": _r(percentile(to_dec, 50)),
                "detect_diagnosed_max_s": _r(percentile(to_dec, 100)),
                "detected": len(to_dec),
                "new_failing_workloads": len(new_fail),
                "workloads_decided_by_more_than_one_replica": sorted(
                    a for a, who in deciders.items() if len(who) > 1
                ),
            }
        rows.append(row)
        say(f"shards: step {total}: {row}")
        prev_total = total
        if stopped_at:
            break
    return {
        "steps": rows,
        "baseline_rss_mib": base,
        "settle_seconds": settle,
        "stopped": stopped_at,
        "operator_source_sha256": ops[1][0][1].source,
    }


def render(r: dict[str, Any]) -> str:
    out = ""
    for n in SPLITS:
        rows = []
        for s in r["steps"]:
            sp = s["splits"][str(n)]
            per = ", ".join(f"{x['pods_in_slice']}: {x['settled_rss_mib']}" for x in sp["replicas"])
            grow = [
                x["growth_kib_per_pod_from_idle"]
                for x in sp["replicas"]
                if x["growth_kib_per_pod_from_idle"] is not None
            ]
            rows.append(
                [
                    s["pods"],
                    sp["pods_per_replica_mean"],
                    per,
                    round(statistics.mean(grow), 2) if grow else None,
                    f"{sp['detect_seen_p50_s']} / {sp['detect_seen_max_s']}",
                    f"{sp['detect_diagnosed_p50_s']} / {sp['detect_diagnosed_max_s']}",
                    f"{sp['detected']}/{sp['new_failing_workloads']}",
                    len(sp["workloads_decided_by_more_than_one_replica"]),
                ]
            )
        out += table(
            f"{n} shard{'s' if n > 1 else ''}: per replica",
            [
                "pods in cluster",
                "pods per replica",
                "per replica: pods in slice: settled RSS MiB",
                "growth KiB/pod from idle (mean)",
                "noticed p50/max s",
                "diagnosed p50/max s",
                "new failing workloads diagnosed",
                "decided by >1 replica",
            ],
            rows,
        )
        out += "\n"
    out += f"Idle RSS with no pods, MiB: {r['baseline_rss_mib']}\n"
    for s in r["steps"]:
        out += (
            f"\nStep {s['pods']} pods: brought up in {s['seconds_to_bring_up']} s; "
            f"RSS MiB {s['component_rss_mib']}; CPU during bring-up {s['bring_up_cpu']}\n"
        )
    if r.get("stopped"):
        out += f"\nStopped: {r['stopped']}\n"
    return out


def headline(r: dict[str, Any]) -> str:
    """The largest step: RSS per replica and diagnosis latency for each split."""
    if not r.get("steps"):
        return "no step completed" + (f" ({r['stopped']})" if r.get("stopped") else "")
    last = r["steps"][-1]
    parts = []
    for n in SPLITS:
        sp = last["splits"].get(str(n))
        if sp:
            parts.append(
                f"{n} shard{'s' if n > 1 else ''}: at most {sp['settled_rss_mib_max']} MiB per "
                f"replica, diagnosed p50 {sp['detect_diagnosed_p50_s']} s"
            )
    return f"at {last['pods']:,} pods, " + "; ".join(parts)
