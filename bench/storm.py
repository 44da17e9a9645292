"""Storm: 100 Deployments x 10 replicas failing at once, 5 bad images + 2 credential causes.

Every namespace holds 10 Deployments: 8 with a tag typo (over 5 distinct bad images,
each a repository whose highest patch exists) and 2 whose private image has no pull
secret (one on the Bearer registry, one on the Basic registry). The registries sit behind
counting proxies, so requests are counted where the registry receives them and split by
client (pullmedic's prober vs the emulated kubelet's pulls); the operator's own trace
gives its requests by kind, its API writes, and per failure group the time from first
seeing the failure to the action, with the registry time it spent in between.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import (
    Operator,
    PodTracker,
    PySpy,
    apiserver_requests,
    cluster_policy,
    cpu_breakdown,
    cpu_seconds,
    labelled,
    machine_cpu,
    namespace,
    operator_writes,
    percentile,
    sandbox_pids,
    say,
    start_bench,
    table,
    wait_policy_ready,
    wait_until,
    write_delta,
)
from sandbox.faultproxy import FaultProxy
from sandbox.images import push_image
from sandbox.kube import deployment, dockerconfig_secret

KINDS = ("ping", "token", "manifest_head", "manifest_get", "blob", "tags")
BAD_IMAGES = 5
SECRETS_NS = "bench-secrets"
# The node side's cost is not what the storm measures: the emulated kubelet leaves out the
# routine Normal Events of a pod's life (Scheduled, Pulling, Pulled, Created, Started,
# Killing; the operator reads pod status, not the kubelet's Events; the pull failures'
# Events are still posted), keeps a smaller pool of API connections (httpcore's pool
# scans every connection for every request it places) and, like containerd, does not fetch
# again the blobs of an image it has (the pods pull Always: a re-pull resolves the tag).
EMULATOR_ARGS = ("--no-routine-events", "--api-concurrency", "12", "--keep-content")


def _kind(path: str) -> str:
    p = path.split("?")[0]
    if p.rstrip("/") == "/v2":
        return "ping"
    if "/manifests/" in p:
        return "manifest"
    if p.endswith("/tags/list"):
        return "tags"
    if "/blobs/" in p:
        return "blob"
    return "other"


def run(quick: bool = False) -> dict[str, Any]:
    n_ns = 2 if quick else 10
    replicas = 3 if quick else 10
    limit = 120.0 if quick else 240.0
    b = start_bench("storm", emulator_args=EMULATOR_ARGS)
    try:
        return _run(b, n_ns, replicas, limit)
    finally:
        b.stop()


def _healthy_rollout(
    b: Any, deployments: int, replicas: int, images: list[str], limit: float
) -> dict[str, Any]:
    """Create ``deployments`` healthy Deployments at once; seconds to all Running. Their
    namespaces are deleted again (and their pods gone) before the storm starts."""
    n_ns = max(1, deployments // 10)
    spaces = [f"healthy-{i}" for i in range(n_ns)]
    for ns in spaces:
        namespace(b, ns)
    tracker = PodTracker(b, "bench=healthy").start()
    work = [(spaces[i % n_ns], f"ok-{i}", images[i % len(images)]) for i in range(deployments)]
    for ns, name, img in work:
        tracker.goal(ns, name, replicas, img)
    say(f"storm baseline: a healthy rollout of {deployments} Deployments x {replicas} replicas")
    created = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda w: b.apps.create_namespaced_deployment(
                    w[0], labelled(deployment(w[1], w[2], replicas), "healthy")
                ),
                work,
            )
        )
    done = wait_until(tracker.all_met, limit, every=0.5)
    met = [g.met_at for g in tracker.goals.values() if g.met_at is not None]
    took = round(max(met) - created, 2) if done and met else None
    tracker.stop()
    for ns in spaces:
        b.core.delete_namespace(ns)
    wait_until(
        lambda: not b.core.list_pod_for_all_namespaces(label_selector="bench=healthy").items,
        300,
        every=2.0,
    )
    return {"deployments": deployments, "all_running_s": took, "all_running": done}


def _run(b: Any, n_ns: int, replicas: int, limit: float) -> dict[str, Any]:
    regs = b.sb.registries
    proxies = {name: FaultProxy(getattr(regs, name).url) for name in ("open", "basic", "bearer")}
    for p in proxies.values():
        p.start()
        b.extra.append(p.stop)
    host = {name: p.host_port for name, p in proxies.items()}

    bad: list[str] = []
    fixed: list[str] = []
    for k in range(BAD_IMAGES):
        for patch in (0, 1):
            push_image(regs.open, f"storm/app{k}", f"1.{k}.{patch}")
        bad.append(f"{host['open']}/storm/app{k}:1.{k}.7")
        fixed.append(f"{host['open']}/storm/app{k}:1.{k}.1")
    push_image(regs.bearer, "private/storm-db", "1.0")
    push_image(regs.basic, "team/storm-api", "1.0")
    bearer_img = f"{host['bearer']}/private/storm-db:1.0"
    basic_img = f"{host['basic']}/team/storm-api:1.0"

    namespaces = [f"storm-{i}" for i in range(n_ns)]
    for ns in [SECRETS_NS, *namespaces]:
        namespace(b, ns)
    b.core.create_namespaced_secret(
        SECRETS_NS,
        dockerconfig_secret("bob", SECRETS_NS, host["bearer"], "bob", regs.bearer.users["bob"]),
    )
    b.core.create_namespaced_secret(
        SECRETS_NS,
        dockerconfig_secret("alice", SECRETS_NS, host["basic"], "alice", regs.basic.users["alice"]),
    )
    cluster_policy(
        b,
        "bench-storm",
        namespaces,
        credentials={
            "secrets": [
                {"namespace": SECRETS_NS, "name": "bob"},
                {"namespace": SECRETS_NS, "name": "alice"},
            ]
        },
        rateLimit={"remediationsPerHour": 10000},
    )
    op = Operator(b, "operator", extra_hosts=list(host.values()))
    op.start()
    wait_policy_ready(b, "bench-storm")
    # The baseline in the same sandbox: a healthy rollout of the same size (every image
    # pulls), created at once, to all Running. What the storm takes beyond it is the part
    # of its time that is pullmedic's to win (the rest is creating and starting pods).
    healthy = _healthy_rollout(b, n_ns * 10, replicas, fixed, limit)

    tracker = PodTracker(b, "bench=storm").start()
    workloads: list[tuple[str, str, str, str, str]] = []  # ns, name, image, expected, cause
    for i, ns in enumerate(namespaces):
        for j in range(8):
            k = (i * 8 + j) % BAD_IMAGES
            workloads.append((ns, f"typo-{j}", bad[k], fixed[k], "TagNotFound"))
        workloads.append((ns, "bearer", bearer_img, bearer_img, "credentials (Bearer)"))
        workloads.append((ns, "basic", basic_img, basic_img, "credentials (Basic)"))
    for ns, name, _img, expected, _cause in workloads:
        tracker.goal(ns, name, replicas, expected)
    for p in proxies.values():
        p.clear()
    tokens_before = regs.token_server.request_count if regs.token_server else 0
    api_before = apiserver_requests(b)
    # 20 samples a second: at py-spy's 100 the sampler spent more CPU than the operator
    spy = PySpy(op.pid, b.state / "storm.pyspy.txt", rate=20)
    assert b.sb.emulator is not None
    emu_spy = PySpy(
        b.sb.emulator.pid, b.state / "storm.emulator.pyspy.txt", rate=20, focus=("sandbox/",)
    )

    say(f"storm: creating {len(workloads)} Deployments x {replicas} replicas at once")
    pids = sandbox_pids(b, op)
    for who, s in (("operator", spy), ("node emulator", emu_spy)):
        if s.proc is not None:
            pids[f"py-spy on the {who}"] = s.proc.pid
    cpu0 = cpu_seconds(pids)
    mcpu0 = machine_cpu()
    load0 = os.getloadavg()
    created = time.time()

    def create(w: tuple[str, str, str, str, str]) -> None:
        ns, name, img, _, _ = w
        b.apps.create_namespaced_deployment(ns, labelled(deployment(name, img, replicas), "storm"))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, workloads))
    created_done = time.time()
    all_fixed = wait_until(tracker.all_met, limit, every=0.5)
    end = time.time()
    cpu = cpu_breakdown(cpu0, cpu_seconds(pids), end - created, (mcpu0, machine_cpu()))
    cpu["load_average_before"] = [round(x, 2) for x in load0]
    cpu["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    # let trailing writes (events, policy status) land before counting
    time.sleep(3)
    profile = spy.stop()
    emu_profile = emu_spy.stop()
    api_after = apiserver_requests(b)
    tokens = (regs.token_server.request_count if regs.token_server else 0) - tokens_before
    tracker.stop()
    counts = tracker.counts()
    trace = op.trace()

    # -- registry requests -------------------------------------------------------------
    reg = [r for r in trace if r.get("k") == "reg" and r["t"] >= created]
    op_kinds = Counter(str(r["kind"]) for r in reg)
    manifests = [r for r in reg if str(r["kind"]).startswith("manifest")]
    # before the first 30 s re-check of a still-stuck group re-probes on purpose
    first_pass = [r for r in manifests if r["t"] < (tracker.first_fail_any or created) + 25]
    first_pass_pairs = {(r["host"], r["p"], r["a"]) for r in first_pass}
    distinct_pairs = {(r["host"], r["p"], r["a"]) for r in manifests}
    by_pair = Counter((r["host"], r["p"], r["a"]) for r in manifests)
    side: dict[str, Counter[str]] = {"pullmedic": Counter(), "kubelet": Counter()}
    for p in proxies.values():
        for rq in p.requests:
            ua = rq.headers.get("user-agent", "")
            who = "pullmedic" if "pullmedic" in ua else "kubelet"
            side[who][f"{rq.method} {_kind(rq.path)}"] += 1

    # -- API writes --------------------------------------------------------------------
    op_api = [r for r in trace if r.get("k") == "api" and r["t"] >= created]
    writes = operator_writes(op_api)
    per_workload: Counter[str] = Counter()
    per_sa: Counter[str] = Counter()
    deletes = 0
    for r in op_api:
        path = str(r["p"])
        if r["m"] == "PATCH" and "/deployments/" in path:
            per_workload[path] += 1
        elif r["m"] == "PATCH" and "/serviceaccounts/" in path:
            per_sa[path] += 1
        elif r["m"] == "DELETE" and "/pods/" in path:
            deletes += 1

    # -- latency -----------------------------------------------------------------------
    actions = [
        r
        for r in trace
        if r.get("k") == "action"
        and r["t"] >= created
        and any(o == "applied" for _, o in r.get("results") or [])
    ]
    first_actions: dict[str, dict[str, Any]] = {}
    for r in actions:
        first_actions.setdefault(str(r.get("g")), r)
    firsts = list(first_actions.values())
    lat = [r["t"] - r["fs"] for r in firsts if r.get("fs")]
    lat_ex = [r["t"] - r["fs"] - (r.get("probe") or 0.0) for r in firsts if r.get("fs")]
    lat_all = [r["t"] - r["fs"] for r in actions if r.get("fs")]
    from_kubelet = []
    acted_at: dict[tuple[str, str], float] = {}  # workload -> its first applied action
    for r in firsts:
        owner = str(r.get("g") or "").split("/")
        if len(owner) >= 3:
            app = owner[2].rsplit("-", 1)[0] if owner[0] == "ReplicaSet" else owner[2]
            ff = tracker.first_fail.get((owner[1], app))
            if ff is not None:
                from_kubelet.append(r["t"] - ff)
            acted_at[(owner[1], app)] = min(r["t"], acted_at.get((owner[1], app), r["t"]))
    decides = [r for r in trace if r.get("k") == "decide" and r["t"] >= created]
    met = [g.met_at for g in tracker.goals.values() if g.met_at is not None]
    first_fail = tracker.first_fail_any
    by_cause: dict[str, list[float]] = {}
    after_action: dict[str, list[float]] = {}  # the fix's rollout: action -> all Running
    for ns, name, _img, _exp, cause in workloads:
        g = tracker.goals[(ns, name)]
        ff = tracker.first_fail.get((ns, name))
        if g.met_at is not None and ff is not None:
            by_cause.setdefault(cause, []).append(g.met_at - ff)
        if g.met_at is not None and (ns, name) in acted_at:
            after_action.setdefault(cause, []).append(g.met_at - acted_at[(ns, name)])
    fails = sorted(tracker.first_fail.values())

    def q(v: list[float], p: float) -> float | None:
        x = percentile(v, p)
        return None if x is None else round(x, 3)

    return {
        "deployments": len(workloads),
        "operator_source_sha256": op.source,
        "replicas": replicas,
        "pods": len(workloads) * replicas,
        "namespaces": n_ns,
        "distinct_bad_images": BAD_IMAGES,
        "credential_causes": 2,
        "failing_image_keyring_pairs": BAD_IMAGES + 2,
        "create_seconds": round(created_done - created, 2),
        "all_fixed": all_fixed,
        "time_limit_s": limit,
        "first_failure_after_create_s": None
        if first_fail is None
        else round(first_fail - created, 2),
        "all_running_after_first_failure_s": (
            round(max(met) - first_fail, 2) if all_fixed and met and first_fail else None
        ),
        "all_fixed_after_create_s": round(max(met) - created, 2) if all_fixed and met else None,
        "healthy_rollout": healthy,
        "ratio_to_healthy_rollout": (
            round((max(met) - created) / healthy["all_running_s"], 2)
            if all_fixed and met and healthy.get("all_running_s")
            else None
        ),
        "workloads_fixed": len(met),
        "fixed_after_first_failure_by_cause_s": {
            c: {"n": len(v), "p50": q(v, 50), "max": q(v, 100)} for c, v in by_cause.items()
        },
        "fixed_after_first_action_by_cause_s": {
            c: {"n": len(v), "p50": q(v, 50), "max": q(v, 100)} for c, v in after_action.items()
        },
        # pod creation throughput: every workload's first failure, after the storm's first
        "last_workload_first_failure_after_first_s": (
            round(fails[-1] - fails[0], 2) if fails else None
        ),
        "workloads_failed": len(fails),
        "pods_at_end": dict(counts),
        "registry": {
            "operator_by_kind": {k: op_kinds.get(k, 0) for k in KINDS},
            "operator_total": sum(op_kinds.values()),
            "operator_manifest_requests": len(manifests),
            "operator_distinct_manifest_probes": len(distinct_pairs),
            "operator_repeated_manifest_probes": sum(n - 1 for n in by_pair.values() if n > 1),
            "first_pass_manifest_requests": len(first_pass),
            "first_pass_distinct_manifest_probes": len(first_pass_pairs),
            "registry_side_pullmedic": dict(side["pullmedic"].most_common()),
            "registry_side_kubelet": dict(side["kubelet"].most_common()),
            "token_server_requests_all_clients": tokens,
        },
        "api_writes": {
            "operator": writes,
            "operator_total": sum(writes.values()),
            "deployment_patches_max_per_workload": max(per_workload.values(), default=0),
            "deployments_patched": len(per_workload),
            "serviceaccount_patches_max_per_sa": max(per_sa.values(), default=0),
            "serviceaccounts_patched": len(per_sa),
            "pod_deletes": deletes,
            "all_clients": write_delta(api_before, api_after),
        },
        "latency": {
            "actions": len(actions),
            "groups_acted_on": len(firsts),
            "every_action_p50_s": q(lat_all, 50),
            "every_action_p99_s": q(lat_all, 99),
            "every_action_max_s": q(lat_all, 100),
            "decisions": len(decides),
            "detection_to_action_p50_s": q(lat, 50),
            "detection_to_action_p99_s": q(lat, 99),
            "detection_to_action_max_s": q(lat, 100),
            "excl_registry_p50_s": q(lat_ex, 50),
            "excl_registry_p99_s": q(lat_ex, 99),
            "excl_registry_max_s": q(lat_ex, 100),
            "kubelet_failure_to_action_p50_s": q(from_kubelet, 50),
            "kubelet_failure_to_action_p99_s": q(from_kubelet, 99),
        },
        "observed_for_s": round(end - created, 1),
        "cpu_while_healing": cpu,
        "operator_profile": profile,
        "emulator_args": list(EMULATOR_ARGS),
        "emulator_profile": emu_profile,
    }


def render(r: dict[str, Any]) -> str:
    reg = r["registry"]
    api = r["api_writes"]
    lat = r["latency"]
    head = (
        f"Storm: {r['deployments']} Deployments x {r['replicas']} replicas = {r['pods']} pods, "
        f"{r['distinct_bad_images']} bad images + {r['credential_causes']} credential causes"
    )
    rows: list[list[Any]] = [
        [
            "first ErrImagePull -> every workload fixed and Running (s)",
            r["all_running_after_first_failure_s"]
            if r["all_fixed"]
            else f"not all within {r['time_limit_s']:.0f} s "
            f"({r['workloads_fixed']}/{r['deployments']})",
        ],
    ]
    base = r.get("healthy_rollout") or {}
    if base:
        rows.append(
            [
                "created -> every workload fixed and Running (s) / the same size healthy "
                "rollout in the same sandbox, created -> all Running (s) = ratio",
                f"{r.get('all_fixed_after_create_s')} / {base.get('all_running_s')} = "
                f"{r.get('ratio_to_healthy_rollout')}",
            ]
        )
    for cause, v in r["fixed_after_first_failure_by_cause_s"].items():
        rows.append([f"  {cause}: per workload p50 / max (s)", f"{v['p50']} / {v['max']}"])
    if r.get("last_workload_first_failure_after_first_s") is not None:
        rows.append(
            [
                "first ErrImagePull -> last workload's first ErrImagePull (s)",
                f"{r['last_workload_first_failure_after_first_s']} "
                f"({r['workloads_failed']} workloads)",
            ]
        )
    for cause, v in (r.get("fixed_after_first_action_by_cause_s") or {}).items():
        rows.append(
            [
                f"  {cause}: first action -> fixed and Running p50 / max (s)",
                f"{v['p50']} / {v['max']}",
            ]
        )
    rows += [
        [
            "detection -> action p50 / p99 (s)",
            f"{lat['detection_to_action_p50_s']} / {lat['detection_to_action_p99_s']}",
        ],
        [
            "  excluding registry round trips p50 / p99 (s)",
            f"{lat['excl_registry_p50_s']} / {lat['excl_registry_p99_s']}",
        ],
        [
            "  kubelet's first ErrImagePull -> action p50 / p99 (s)",
            f"{lat['kubelet_failure_to_action_p50_s']} / {lat['kubelet_failure_to_action_p99_s']}",
        ],
        [
            "every applied action (incl. re-checks) p50 / p99 / max (s)",
            f"{lat['every_action_p50_s']} / {lat['every_action_p99_s']} / "
            f"{lat['every_action_max_s']}",
        ],
        [
            "actions applied / groups acted on / decisions",
            f"{lat['actions']} / {lat['groups_acted_on']} / {lat['decisions']}",
        ],
    ]
    out = table(head, ["figure", "value"], rows)
    kinds = reg["operator_by_kind"]
    out += "\n" + table(
        "Storm: registry requests",
        ["client", *KINDS, "total"],
        [["pullmedic (its trace)", *[kinds[k] for k in KINDS], reg["operator_total"]]],
    )
    out += (
        f"\nManifest requests by pullmedic: {reg['operator_manifest_requests']} for "
        f"{reg['operator_distinct_manifest_probes']} distinct (reference, credential) probes "
        f"({reg['operator_repeated_manifest_probes']} repeats in total; in the first 25 s, "
        f"before any re-check: {reg.get('first_pass_manifest_requests')} requests "
        f"for {reg.get('first_pass_distinct_manifest_probes')} probes); the storm has "
        f"{r['failing_image_keyring_pairs']} failing (image, credential) pairs.\n"
        f"Registry side (counting proxies), pullmedic: "
        f"{dict(_desc(reg['registry_side_pullmedic']))}"
        f"; kubelet: {dict(_desc(reg['registry_side_kubelet']))}; token server (all clients): "
        f"{reg['token_server_requests_all_clients']}.\n\n"
    )
    out += table(
        "Storm: API writes by pullmedic",
        ["write", "count"],
        [[k, v] for k, v in _desc(api["operator"])]
        + [
            ["max PATCHes of one Deployment", api["deployment_patches_max_per_workload"]],
            ["max PATCHes of one ServiceAccount", api["serviceaccount_patches_max_per_sa"]],
        ],
    )
    top = ", ".join(f"{k}: {v}" for k, v in _desc(api["all_clients"])[:8])
    out += f"\nAll clients (apiserver_request_total delta), top: {top}\n"
    cpu = r.get("cpu_while_healing")
    if cpu:
        rows = [[k, v] for k, v in _desc(cpu["cpu_s"]) if v > 0]
        busy = f"machine {cpu['machine_busy_pct']} % busy"
        if "machine_all_busy_pct" in cpu:
            rows.append(["other processes on the machine", cpu["other_processes_cpu_s"]])
            busy = (
                f"this run {cpu['machine_busy_pct']} % of the machine, "
                f"machine {cpu['machine_all_busy_pct']} % busy in all"
            )
        out += "\n" + table(
            f"Storm: CPU seconds per process from creation to all fixed "
            f"({cpu['wall_s']} s wall, {busy})",
            ["process", "CPU s"],
            rows,
        )
        if "load_average_before" in cpu:
            out += (
                f"\nLoad average before / after: "
                f"{', '.join(str(x) for x in cpu['load_average_before'])} / "
                f"{', '.join(str(x) for x in cpu['load_average_after'])}\n"
            )
    prof = r.get("operator_profile")
    if prof:
        out += (
            f"\nOperator CPU profile (py-spy, {prof['samples']} samples), self time: "
            + "; ".join(f"{k} {v}%" for k, v in prof["self_pct"][:6])
            + "\n"
        )
    eprof = r.get("emulator_profile")
    if eprof and eprof.get("inclusive_focus_pct"):
        focus = eprof["inclusive_focus_pct"]
        below_root = [kv for kv in focus if kv[1] < focus[0][1]]  # main, run(): everything
        out += (
            f"\nNode emulator (`{' '.join(r.get('emulator_args') or []) or 'defaults'}`) CPU "
            f"profile (py-spy, {eprof['samples']} samples), inclusive: "
            + "; ".join(f"{k} {v}%" for k, v in below_root[:6])
            + "; self time: "
            + "; ".join(f"{k} {v}%" for k, v in eprof["self_pct"][:5])
            + "\n"
        )
    return out


def _desc(d: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(d.items(), key=lambda kv: -kv[1])


def headline(r: dict[str, Any]) -> str:
    """The README's line: requests, writes, reaction time, and the whole storm's time."""
    lat, reg, api = r["latency"], r["registry"], r["api_writes"]
    if r["all_fixed"]:
        done = f"everything fixed and Running {r['all_running_after_first_failure_s']} s "
        done += "after the first failure"
    else:
        done = (
            f"{r['workloads_fixed']} of {r['deployments']} workloads fixed within "
            f"{r['time_limit_s']:.0f} s"
        )
    return (
        f"{r['pods']:,} failing pods in {r['deployments']:,} Deployments: "
        f"{reg['operator_total']} registry requests by pullmedic, at most "
        f"{api['deployment_patches_max_per_workload']} patch per Deployment, detection to "
        f"action p50 {lat['detection_to_action_p50_s']} s and p99 "
        f"{lat['detection_to_action_p99_s']} s; {done}"
    )
