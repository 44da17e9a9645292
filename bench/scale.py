"""Scale: the operator watching 1k, 5k and 10k pods, about 1 % of them failing.

One sandbox; the operator starts with no pods and the cluster grows in steps. Each step
first brings the healthy pods up (100-replica Deployments of one image that the node has
cached, ``IfNotPresent``, so the emulated kubelet marks them Running without a pull), then
adds 1 % of the step's growth as failing pods (5-replica Deployments, each a distinct
missing tag; no policy selects them, so pullmedic diagnoses and reports, as it would for
any namespace). Per step: operator peak and settled RSS, CPU seconds, and the detection
latency of the new failures (the kubelet's first ErrImagePull -> pullmedic notices the pod
-> its diagnosis is done). After the last step a second operator with tracemalloc on is
started against the same cluster and snapshotted, to say where the memory goes.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from bench.common import (
    Bench,
    Operator,
    PodTracker,
    ProcSampler,
    labelled,
    namespace,
    percentile,
    say,
    start_bench,
    table,
    wait_until,
)
from sandbox.images import push_image
from sandbox.kube import deployment

NS = "scale"
PER_DEPLOYMENT = 100
FAILING_REPLICAS = 5
TARGET_MIB = 250.0


def run(quick: bool = False) -> dict[str, Any]:
    steps = [250, 1000] if quick else [1000, 5000, 10000]
    settle = 10.0 if quick else 30.0
    b = start_bench("scale")
    try:
        return _run(b, steps, settle, profile=not quick)
    finally:
        b.stop()


def _scale_healthy(b: Bench, image: str, total: int, have: dict[str, int]) -> None:
    n = math.ceil(total / PER_DEPLOYMENT)
    for i in range(n):
        name = f"ok-{i:03d}"
        want = min(PER_DEPLOYMENT, total - i * PER_DEPLOYMENT)
        if name not in have:
            dep = deployment(name, image, want, pull_policy="IfNotPresent")
            b.apps.create_namespaced_deployment(NS, labelled(dep, "scale"))
        elif have[name] != want:
            b.apps.patch_namespaced_deployment_scale(name, NS, {"spec": {"replicas": want}})
        have[name] = want


def _settled(sampler: ProcSampler, seconds: float) -> float:
    window = sampler.window(time.monotonic() - seconds)
    return round(statistics.median(s[1] for s in window), 1) if window else 0.0


def _run(b: Bench, steps: list[int], settle: float, profile: bool) -> dict[str, Any]:
    regs = b.sb.registries
    push_image(regs.open, "scale/app", "1.0")
    image = f"{regs.open.host}/scale/app:1.0"
    namespace(b, NS)
    op = Operator(b, "operator")
    op.start()
    sampler = ProcSampler(op.pid).start()
    b.extra.append(sampler.stop)
    tracker = PodTracker(b, "bench=scale").start()
    b.extra.append(tracker.stop)
    time.sleep(settle)
    base_rss = _settled(sampler, 5)
    base_cpu = sampler.read()[2]
    say(f"scale: operator idle with no pods: {base_rss} MiB")

    have: dict[str, int] = {}
    failing: list[str] = []
    rows: list[dict[str, Any]] = []
    prev_total = 0
    for total in steps:
        n_fail_pods = max(FAILING_REPLICAS, round((total - prev_total) * 0.01))
        new_fail = [
            f"bad-{len(failing) + k:03d}" for k in range(math.ceil(n_fail_pods / FAILING_REPLICAS))
        ]
        healthy = total - (len(failing) + len(new_fail)) * FAILING_REPLICAS
        t0 = time.monotonic()
        cpu0 = sampler.read()[2]
        say(f"scale: step {total}: {healthy} healthy pods")
        _scale_healthy(b, image, healthy, have)

        def all_up(h: int = healthy) -> bool:
            return tracker.counts()["running"] >= h

        up = wait_until(all_up, 1800, every=1.0)
        t_up = time.monotonic() - t0
        say(f"scale: {tracker.counts()['running']} running after {t_up:.0f} s")
        created = time.time()
        for name in new_fail:
            tag = f"9.9.{len(failing)}"
            failing.append(name)
            dep = deployment(name, f"{regs.open.host}/scale/app:{tag}", FAILING_REPLICAS)
            b.apps.create_namespaced_deployment(NS, labelled(dep, "scale"))

        def detected(names: list[str] = new_fail, created: float = created) -> bool:
            done = {
                str(r.get("g", "")).split("/")[2].rsplit("-", 1)[0]
                for r in op.trace()
                if r.get("k") == "decide" and r["t"] >= created
            }
            return all(n in done for n in names)

        wait_until(detected, 300, every=1.0)
        time.sleep(settle)
        t_end = time.monotonic()
        window = sampler.window(t0, t_end)
        cpu1 = sampler.read()[2]
        trace = [r for r in op.trace() if r["t"] >= created]
        seen: dict[str, float] = {}
        decided: dict[str, float] = {}
        for r in trace:
            if r.get("k") == "seen" and r.get("app") in new_fail:
                seen.setdefault(str(r["app"]), r["t"])
            if r.get("k") == "decide":
                app = str(r.get("g", "")).split("/")[2].rsplit("-", 1)[0]
                decided.setdefault(app, r["t"])
        to_seen = [
            seen[n] - tracker.first_fail[(NS, n)]
            for n in new_fail
            if n in seen and (NS, n) in tracker.first_fail
        ]
        to_decided = [
            decided[n] - tracker.first_fail[(NS, n)]
            for n in new_fail
            if n in decided and (NS, n) in tracker.first_fail
        ]
        internal = [decided[n] - seen[n] for n in new_fail if n in decided and n in seen]
        counts = tracker.counts()
        row: dict[str, Any] = {
            "pods": sum(counts.values()),
            "healthy_running": counts["running"],
            "failing_pods": len(failing) * FAILING_REPLICAS,
            "all_healthy_up": up,
            "seconds_to_bring_up": round(t_up, 1),
            "peak_rss_mib": round(max((s[1] for s in window), default=0.0), 1),
            "vmhwm_mib": round(sampler.read()[1], 1),
            "settled_rss_mib": _settled(sampler, 5),
            "cpu_seconds_step": round(cpu1 - cpu0, 1),
            "cpu_seconds_total": round(cpu1 - base_cpu, 1),
            "detect_seen_p50_s": _r(percentile(to_seen, 50)),
            "detect_seen_max_s": _r(percentile(to_seen, 100)),
            "detect_diagnosed_p50_s": _r(percentile(to_decided, 50)),
            "detect_diagnosed_max_s": _r(percentile(to_decided, 100)),
            "noticed_to_diagnosed_p50_s": _r(percentile(internal, 50)),
            "noticed_to_diagnosed_max_s": _r(percentile(internal, 100)),
            "new_failing_workloads": len(new_fail),
            "detected": len(to_decided),
        }
        rows.append(row)
        say(f"scale: step {total}: {row}")
        prev_total = total

    prev_pods: int = 0
    prev_rss: float = base_rss
    for row in rows:
        dp = row["pods"] - prev_pods
        row["growth_kib_per_pod"] = (
            round((row["settled_rss_mib"] - prev_rss) * 1024 / dp, 2) if dp else None
        )
        prev_pods, prev_rss = row["pods"], row["settled_rss_mib"]
    last = rows[-1]
    overall = (
        round((last["settled_rss_mib"] - base_rss) * 1024 / last["pods"], 2)
        if last["pods"]
        else None
    )
    result: dict[str, Any] = {
        "steps": rows,
        "operator_source_sha256": op.source,
        "baseline_rss_mib": base_rss,
        "growth_kib_per_pod_overall": overall,
        "target_settled_rss_mib": TARGET_MIB,
        "settle_seconds": settle,
        "gc_snapshot": op.request_snapshot(),
    }
    if profile:
        result["tracemalloc"] = _profile(b, last["pods"])
    return result


def _profile(b: Bench, pods: int) -> dict[str, Any] | None:
    """A second operator with tracemalloc (10 frames) against the same cluster."""
    say(f"scale: tracemalloc pass: a fresh operator listing {pods} pods")
    prof = Operator(b, "operator-tracemalloc")
    prof.start(tracemalloc_frames=10)
    sampler = ProcSampler(prof.pid).start()

    def idle() -> bool:
        w = sampler.window(time.monotonic() - 10)
        return len(w) > 20 and w[-1][2] - w[0][2] < 1.0

    time.sleep(20)
    wait_until(idle, 300, every=2.0)
    snap = prof.request_snapshot(300)
    rss = _settled(sampler, 5)
    sampler.stop()
    prof.stop()
    if snap is not None:
        snap["rss_with_tracemalloc_mib"] = rss
    return snap


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def render(r: dict[str, Any]) -> str:
    rows = [
        [
            s["pods"],
            s["failing_pods"],
            s["peak_rss_mib"],
            s["settled_rss_mib"],
            s["growth_kib_per_pod"],
            s["cpu_seconds_step"],
            s["seconds_to_bring_up"],
            f"{s['detect_seen_p50_s']} / {s['detect_seen_max_s']}",
            f"{s['detect_diagnosed_p50_s']} / {s['detect_diagnosed_max_s']}",
        ]
        for s in r["steps"]
    ]
    out = table(
        f"Scale: operator watching N pods (about 1 % failing); idle with 0 pods: "
        f"{r['baseline_rss_mib']} MiB",
        [
            "pods watched",
            "failing",
            "peak RSS MiB",
            "settled RSS MiB",
            "growth KiB/pod (vs previous)",
            "CPU s in step",
            "s to bring pods up",
            "noticed p50/max s (vs bench watch)",
            "diagnosed p50/max s (vs bench watch)",
        ],
        rows,
    )
    out += (
        "\nDetection columns: seconds from the first ErrImagePull seen by the bench's own pod "
        "watch to pullmedic noticing the pod (its engine gets it) and to its diagnosis being "
        "done (0.25 s debounce included). Both are watchers of the same apiserver, so a "
        "negative value means the bench's watch was behind the operator's.\n"
    )
    internal = [
        f"{s['pods']}: {s['noticed_to_diagnosed_p50_s']} / {s['noticed_to_diagnosed_max_s']}"
        for s in r["steps"]
        if "noticed_to_diagnosed_p50_s" in s
    ]
    if internal:
        out += "Noticed -> diagnosed inside pullmedic, p50 / max s: " + "; ".join(internal) + "\n"
    gc_top = (r.get("gc_snapshot") or {}).get("gc_types_top") or []
    if gc_top:
        out += (
            f"\nLive objects in the measured operator at {r['steps'][-1]['pods']} pods: "
            f"{r['gc_snapshot'].get('gc_objects')}; most common types: "
            + ", ".join(f"{t} {n}" for t, n in gc_top[:10])
            + "\n"
        )
    out += (
        f"\nGrowth over the whole range: {r['growth_kib_per_pod_overall']} KiB per watched pod "
        f"(settled RSS target at 10k pods: {r['target_settled_rss_mib']:.0f} MiB).\n"
    )
    tm = r.get("tracemalloc")
    if tm and tm.get("by_file"):
        out += (
            f"\ntracemalloc (fresh operator listing the same pods; RSS with tracing "
            f"{tm.get('rss_with_tracemalloc_mib')} MiB, traced {tm.get('traced_current_mib')} "
            f"MiB): top files: "
            + "; ".join(f"{f.split('site-packages/')[-1]} {m} MiB" for f, m, _ in tm["by_file"][:6])
            + "\n"
        )
    return out


def headline(r: dict[str, Any]) -> str:
    """The largest step: settled memory against idle, and how soon failures were diagnosed."""
    if not r.get("steps"):
        return "no step completed"
    last = r["steps"][-1]
    return (
        f"one replica watching {last['pods']:,} pods: settled RSS {last['settled_rss_mib']} MiB "
        f"(idle {r['baseline_rss_mib']} MiB); new failures diagnosed p50 "
        f"{last['detect_diagnosed_p50_s']} s after the first ErrImagePull"
    )
