"""Watch memory: operator RSS per replica at 1k, 10k and 50k watched pods, 1, 2 and 4 shards.

What grows with the cluster is what the pod watch keeps per pod, and that does not depend
on whether a pod runs. So this run has no node at all: the pods are created in bulk and stay
Pending, unscheduled, never failing, which is what most pods of a big cluster look like to
pullmedic (never stuck). The scale and shards runs, with a node, stop near 10k pods on two
cores because the node emulator and the API server cannot bring more pods up; here the API
server and etcd only have to store them.

Seven operator processes run side by side from an empty cluster: one unsharded replica,
two replicas of a 2-shard split and four of a 4-shard split. After each step every replica
must have seen a marker pod created after the step's last pod (its status written by this
run as ErrImagePull, so pullmedic takes it up; one marker lands in every shard): a watch
delivers in order, so each replica has then received every pod of the step. Then RSS is
read as the median of a 5 s window after a settle time. Last, an eighth, unsharded
replica starts with every pod already there, as after a restart or a failover: its peak
while it lists them, its settled RSS, and when it noticed a new stuck pod.

``BENCH_WATCHMEM_STEPS`` (default ``1000,10000,50000``) sets the cluster sizes.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    Bench,
    Operator,
    ProcSampler,
    namespace,
    sandbox_pids,
    say,
    settled_rss,
    split_operators,
    start_bench,
    table,
    wait_until,
)
from pullmedic.core.sharding import Shard

NS = "watchmem"
SPLITS = (1, 2, 4)
CREATORS = 12  # parallel create requests


def run(quick: bool = False) -> dict[str, Any]:
    default = "250,1000" if quick else "1000,10000,50000"
    steps = [int(s) for s in os.environ.get("BENCH_WATCHMEM_STEPS", default).split(",")]
    b = start_bench("watchmem", node=False)
    try:
        return _run(b, steps, 10.0 if quick else 20.0)
    finally:
        b.stop()


def _pod(name: str, image: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "app", "image": image}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def _create_pods(b: Bench, image: str, start: int, stop: int, uids: list[str]) -> float:
    """Create pods ``start..stop-1`` (their uids appended to ``uids``); returns pods/s."""
    t0 = time.monotonic()

    def make(chunk: range) -> None:
        with b.http(timeout=60) as h:
            for i in chunk:
                body = _pod(f"p-{i:06d}", image, {"bench": "watchmem", "app": "healthy"})
                r = h.post(f"/api/v1/namespaces/{NS}/pods", json=body)
                if r.status_code != 201:
                    raise RuntimeError(f"create pod {i}: {r.status_code} {r.text[:200]}")
                uids.append(r.json()["metadata"]["uid"])

    n = stop - start
    size = max(1, -(-n // CREATORS))
    chunks = [range(s, min(s + size, stop)) for s in range(start, stop, size)]
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(make, chunks))
    return n / max(time.monotonic() - t0, 1e-6)


def _stuck_status(image: str) -> dict[str, Any]:
    msg = f'failed to pull and unpack image "{image}": not found'
    return {
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "app",
                    "image": image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ErrImagePull", "message": msg}},
                }
            ],
        }
    }


def _markers(b: Bench, image: str, step: int) -> dict[str, str]:
    """Marker pods until every shard of every split holds one; returns name -> uid."""
    want = {(i, n) for n in SPLITS for i in range(n)}
    made: dict[str, str] = {}
    k = 0
    with b.http(timeout=30) as h:
        while want and k < 200:
            name = f"marker-{step}-{k:03d}"
            k += 1
            body = _pod(name, image, {"bench": "watchmem", "app": name})
            r = h.post(f"/api/v1/namespaces/{NS}/pods", json=body)
            r.raise_for_status()
            uid = r.json()["metadata"]["uid"]
            covers = {(i, n) for (i, n) in want if (Shard(i, n) if n > 1 else Shard()).holds(uid)}
            if not covers:
                h.delete(f"/api/v1/namespaces/{NS}/pods/{name}")
                continue
            want -= covers
            made[name] = uid
            p = h.patch(
                f"/api/v1/namespaces/{NS}/pods/{name}/status",
                json=_stuck_status(image),
                headers={"Content-Type": "application/strategic-merge-patch+json"},
            )
            p.raise_for_status()
    if want:
        raise RuntimeError(f"no marker landed in shards {sorted(want)}")
    return made


def _run(b: Bench, steps: list[int], settle: float) -> dict[str, Any]:
    regs = b.sb.registries
    image = f"{regs.open.host}/watchmem/app:1.0"  # never pulled: no node
    missing = f"{regs.open.host}/watchmem/app:9.9"
    namespace(b, NS)
    ops, samplers = split_operators(b, SPLITS)
    time.sleep(settle)
    base = {name: settled_rss(s, 5) for name, s in samplers.items()}
    say(f"watchmem: idle with no pods: {base}")
    pids = sandbox_pids(b)
    rows: list[dict[str, Any]] = []
    have = 0
    marker_count = 0
    uids: list[str] = []
    stopped: str | None = None
    for total in steps:
        say(f"watchmem: creating pods {have}..{total}")
        try:
            rate = _create_pods(b, image, have, total, uids)
        except Exception as e:  # the control plane gave out: measure what is there
            stopped = f"step {total}: pod creation failed: {e}"
            say(f"watchmem: {stopped}")
            break
        have = total
        markers = _markers(b, missing, total)
        marker_count += len(markers)

        def seen_all(m: dict[str, str] = markers) -> bool:
            for n in SPLITS:
                for shard, op in ops[n]:
                    mine = {u for u in m.values() if shard.holds(u)}
                    got = {r.get("uid") for r in op.trace() if r.get("k") == "seen"}
                    if not mine <= got:
                        return False
            return True

        delivered = wait_until(seen_all, 600, every=1.0)
        time.sleep(settle)
        components = {}
        for name, pid in pids.items():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        components[name] = round(int(line.split()[1]) / 1024, 1)
            except OSError:
                pass
        row: dict[str, Any] = {
            "pods": total + marker_count,
            "healthy_pods": total,
            "markers": sorted(markers),
            "create_rate_per_s": round(rate, 1),
            "all_replicas_caught_up": delivered,
            "component_rss_mib": components,
            "splits": {},
        }
        for n in SPLITS:
            reps = []
            for shard, op in ops[n]:
                rss = settled_rss(samplers[op.name], 5)
                mine = sum(1 for u in uids if shard.holds(u))
                reps.append(
                    {
                        "replica": op.name,
                        "pods_in_slice": mine,
                        "settled_rss_mib": rss,
                        "growth_kib_per_pod_from_idle": round(
                            (rss - base[op.name]) * 1024 / mine, 3
                        ),
                    }
                )
            row["splits"][str(n)] = {
                "replicas": reps,
                "settled_rss_mib_mean": round(
                    statistics.mean(r["settled_rss_mib"] for r in reps), 1
                ),
                "settled_rss_mib_max": max(r["settled_rss_mib"] for r in reps),
            }
        rows.append(row)
        say(f"watchmem: step {total}: {row}")
    restarted = None if stopped or not rows else _restart(b, missing, have, settle)
    return {
        "steps": rows,
        "restarted": restarted,
        "baseline_rss_mib": base,
        "settle_seconds": settle,
        "stopped": stopped,
        "operator_source_sha256": ops[1][0][1].source,
    }


def _restart(b: Bench, image: str, pods: int, settle: float) -> dict[str, Any]:
    """A replica started last, as after a restart or failover: it lists every pod first."""
    op = Operator(b, "op-restarted")
    t0 = time.monotonic()
    op.start()
    sampler = ProcSampler(op.pid).start()
    b.extra.append(sampler.stop)
    marker = _pod("marker-restart", image, {"bench": "watchmem", "app": "marker-restart"})
    with b.http(timeout=30) as h:
        r = h.post(f"/api/v1/namespaces/{NS}/pods", json=marker)
        r.raise_for_status()
        uid = r.json()["metadata"]["uid"]
        h.patch(
            f"/api/v1/namespaces/{NS}/pods/marker-restart/status",
            json=_stuck_status(image),
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        ).raise_for_status()
    caught_up = wait_until(
        lambda: any(x.get("uid") == uid for x in op.trace() if x.get("k") == "seen"), 600, 1.0
    )
    t_caught = time.monotonic() - t0
    time.sleep(settle)
    peak = max((s[1] for s in sampler.window(t0)), default=0.0)
    out = {
        "pods": pods,
        "caught_up": caught_up,
        "seconds_to_marker": round(t_caught, 1),
        "peak_rss_mib": round(peak, 1),
        "settled_rss_mib": settled_rss(sampler, 5),
    }
    say(f"watchmem: restarted replica: {out}")
    return out


def render(r: dict[str, Any]) -> str:
    head = [
        "pods in cluster",
        "split",
        "pods per replica",
        "RSS per replica (MiB)",
        "growth from idle (KiB/pod)",
    ]
    rows: list[list[Any]] = []
    for s in r["steps"]:
        for n in SPLITS:
            sp = s["splits"][str(n)]
            reps = sp["replicas"]
            rss = [x["settled_rss_mib"] for x in reps]
            grow = [x["growth_kib_per_pod_from_idle"] for x in reps]
            rows.append(
                [
                    s["healthy_pods"],
                    f"{n} shard{'s' if n > 1 else ''}",
                    round(statistics.mean(x["pods_in_slice"] for x in reps)),
                    f"{min(rss)}-{max(rss)}" if n > 1 else rss[0],
                    f"{min(grow)}-{max(grow)}" if n > 1 else grow[0],
                ]
            )
    out = table(
        "Watch memory: RSS per replica, pods Pending and never failing (no node)", head, rows
    )
    marginal = []
    steps = r["steps"]
    for a, b in itertools.pairwise(steps):
        for n in SPLITS:
            ra = a["splits"][str(n)]["settled_rss_mib_mean"]
            rb = b["splits"][str(n)]["settled_rss_mib_mean"]
            per = (rb - ra) * 1024 / ((b["healthy_pods"] - a["healthy_pods"]) / n)
            marginal.append(
                f"{n} shard(s) {a['healthy_pods']}->{b['healthy_pods']}: {per:.3f} KiB/pod"
            )
    if marginal:
        out += "\n\nMarginal growth between steps (mean replica): " + "; ".join(marginal)
    out += f"\n\nIdle with no pods: {r['baseline_rss_mib']}"
    if r.get("restarted"):
        x = r["restarted"]
        out += (
            f"\n\nA replica started with {x['pods']} pods present (restart, failover): "
            f"peak {x['peak_rss_mib']} MiB while listing, settled {x['settled_rss_mib']} MiB, "
            f"its first stuck pod noticed {x['seconds_to_marker']} s after start"
        )
    if r.get("stopped"):
        out += f"\n\nStopped: {r['stopped']}"
    last = steps[-1] if steps else None
    if last:
        rss = last["component_rss_mib"]
        out += f"\n\nControl plane RSS at {last['healthy_pods']} pods (MiB): {rss}"
    return out


def headline(r: dict[str, Any]) -> str:
    """The largest step per split, and the replica that starts with every pod present."""
    if not r.get("steps"):
        return "no step completed" + (f" ({r['stopped']})" if r.get("stopped") else "")
    last = r["steps"][-1]
    base = r.get("baseline_rss_mib") or {}
    idle = base.get("op-0-of-1", min(base.values(), default=None))
    sharded = " and ".join(
        f"{last['splits'][str(n)]['settled_rss_mib_max']} MiB at {n} shards"
        for n in SPLITS
        if n > 1 and str(n) in last["splits"]
    )
    out = (
        f"{last['splits']['1']['settled_rss_mib_max']} MiB for one replica watching "
        f"{last['healthy_pods']:,} pods (idle {idle} MiB); per replica {sharded}"
    )
    x = r.get("restarted")
    if x:
        out += (
            f"; a replica started with all of them present peaks at {x['peak_rss_mib']} MiB "
            f"while listing and settles at {x['settled_rss_mib']} MiB"
        )
    return out
