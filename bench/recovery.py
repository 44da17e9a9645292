"""Recovery: a tag typo and a missing pull secret, healed four ways side by side.

In one sandbox, at real kubelet timing, eight 10-replica Deployments are created at the
same moment: {typo, private} x four namespaces:

(a) ``rec-pullmedic``: pullmedic (Remediate) alone.
(b) ``rec-kubelet``: the kubelet alone; a "human" applies the fix the instant the first
    ErrImagePull shows (the Deployment's tag is patched; the pull secret is created and
    added to the ServiceAccount; no pod is recreated).
(c) ``rec-peer``: titansoft imagepullsecret-patcher (:mod:`bench.peer`), started the instant
    the missing-secret Deployment's first ErrImagePull shows; it only adds a secret to
    ServiceAccounts, so it is expected to heal neither case.
(d) ``rec-desched``: the same human fix as (b) plus descheduler's PodLifeTime evicting pods
    waiting in ImagePullBackOff/ErrImagePull (:mod:`bench.descheduler`), running all along.

The clock runs from each Deployment's first ErrImagePull to all its replicas Running (with
the fixed image for the typo). The human baselines at alert time are computed from (b)
and (d): the default kube-prometheus alert's ``for`` plus the measured recovery.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from bench import descheduler, peer
from bench.common import (
    Bench,
    Operator,
    PodTracker,
    cluster_policy,
    labelled,
    namespace,
    say,
    start_bench,
    table,
    wait_policy_ready,
    wait_until,
)
from sandbox.images import push_image
from sandbox.kube import deployment, dockerconfig_secret

OP_NS = "rec-pullmedic"
BASE_NS = "rec-kubelet"
PEER_NS = "rec-peer"
DESCHED_NS = "rec-desched"
SECRETS_NS = "bench-secrets"
# descheduler: the most eager settings that still make sense (a user's are usually minutes).
DESCHED_LIFETIME_S = 5
DESCHED_INTERVAL_S = 5
# kube-prometheus (kubernetes-mixin) default alerts a stuck pod trips, with their `for`.
ALERTS: tuple[tuple[str, int], ...] = (("KubePodNotReady", 15 * 60), ("KubeContainerWaiting", 3600))
WHO = {
    OP_NS: "pullmedic (Remediate)",
    BASE_NS: "kubelet alone + human fix",
    PEER_NS: "titansoft imagepullsecret-patcher",
    DESCHED_NS: "human fix + descheduler PodLifeTime",
}
APPS = (("typo", "tag typo"), ("private", "missing pull secret"))


def _human_fix_tag(b: Bench, ns: str, good: str, log: dict[tuple[str, str], float]) -> None:
    log[(ns, "typo")] = time.time()
    b.apps.patch_namespaced_deployment(
        "typo",
        ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": good}]}}}},
    )


def _human_fix_secret(b: Bench, ns: str, log: dict[tuple[str, str], float]) -> None:
    log[(ns, "private")] = time.time()
    reg = b.sb.registries.bearer
    b.core.create_namespaced_secret(
        ns, dockerconfig_secret("regcred", ns, reg.host, "bob", reg.users["bob"])
    )
    b.core.patch_namespaced_service_account(
        "default", ns, {"imagePullSecrets": [{"name": "regcred"}]}
    )


def run(quick: bool = False) -> dict[str, Any]:
    replicas = 10
    limit = 60.0 if quick else 180.0
    b = start_bench("recovery")
    try:
        return _run(b, replicas, limit)
    finally:
        b.stop()


def _run(b: Bench, replicas: int, limit: float) -> dict[str, Any]:
    regs = b.sb.registries
    for tag in ("2.0.0", "2.0.1", "2.0.3"):
        push_image(regs.open, "rec/web", tag)
    push_image(regs.bearer, "private/rec-api", "1.0")
    bad = f"{regs.open.host}/rec/web:2.0.9"
    good = f"{regs.open.host}/rec/web:2.0.3"
    private = f"{regs.bearer.host}/private/rec-api:1.0"

    for ns in (OP_NS, BASE_NS, PEER_NS, DESCHED_NS, SECRETS_NS):
        namespace(b, ns)
    bob = regs.bearer.users["bob"]
    b.core.create_namespaced_secret(
        SECRETS_NS, dockerconfig_secret("regcred", SECRETS_NS, regs.bearer.host, "bob", bob)
    )
    cluster_policy(
        b,
        "bench-recovery",
        [OP_NS],  # no other namespace is selected
        credentials={"secrets": [{"namespace": SECRETS_NS, "name": "regcred"}]},
    )
    op = Operator(b, "operator")
    op.start()
    wait_policy_ready(b, "bench-recovery")

    peer_result = peer.prepare(b, PEER_NS)  # every other namespace is excluded
    desched = descheduler.start(
        b, [DESCHED_NS], max_pod_lifetime_s=DESCHED_LIFETIME_S, interval_s=DESCHED_INTERVAL_S
    )

    tracker = PodTracker(b, "bench=recovery").start()
    fixes: dict[tuple[str, str], float] = {}
    human = [BASE_NS] + ([DESCHED_NS] if desched.get("running") else [])
    for ns in human:
        tracker.on_first_fail[(ns, "typo")] = partial(_human_fix_tag, b, ns, good, fixes)
        tracker.on_first_fail[(ns, "private")] = partial(_human_fix_secret, b, ns, fixes)
    if peer_result.get("ready"):
        # Started at the missing-secret Deployment's first ErrImagePull: the human's head start.
        tracker.on_first_fail[(PEER_NS, "private")] = partial(peer.launch, b, peer_result)
    spaces = [OP_NS, BASE_NS]
    if peer_result.get("ready"):
        spaces.append(PEER_NS)
    if desched.get("running"):
        spaces.append(DESCHED_NS)
    for ns in spaces:
        tracker.goal(ns, "typo", replicas, good)
        tracker.goal(ns, "private", replicas, private)

    say(f"recovery: creating {2 * len(spaces)} Deployments x {replicas} replicas")
    created = time.time()
    for ns in spaces:
        b.apps.create_namespaced_deployment(
            ns, labelled(deployment("typo", bad, replicas), "recovery")
        )
        b.apps.create_namespaced_deployment(
            ns, labelled(deployment("private", private, replicas), "recovery")
        )
    wait_until(tracker.all_met, limit, every=0.5)
    elapsed = time.time() - created
    tracker.stop()
    peer.stop(peer_result)
    descheduler.stop(desched)

    trace = op.trace()
    actions = [r for r in trace if r.get("k") == "action"]
    cases = []
    for ns in spaces:
        for app, what in APPS:
            g = tracker.goals[(ns, app)]
            ff = tracker.first_fail.get((ns, app))
            rec = None if g.met_at is None or ff is None else round(g.met_at - ff, 2)
            fix_at: float | None = None
            if ns == OP_NS:
                action = next((a for a in actions if f"/{ns}/{app}-" in str(a.get("g"))), None)
                fix_at = float(action["t"]) if action else None
            elif (ns, app) in fixes:
                fix_at = fixes[(ns, app)]
            elif ns == PEER_NS and app == "private":
                fix_at = peer_result.get("service_account_patched_at")
            case: dict[str, Any] = {
                "case": what,
                "who": WHO[ns],
                "namespace": ns,
                "first_err_image_pull_s": None if ff is None else round(ff - created, 2),
                "recovery_s": rec,
                "recovered": rec is not None,
                "fix_applied_after_first_failure_s": (
                    round(fix_at - ff, 2) if fix_at is not None and ff is not None else None
                ),
            }
            if ns in human:
                # Computed, not measured: the human acts when the alert fires instead of at
                # the first ErrImagePull; what follows the fix is the measured recovery.
                case["computed_at_alert_s"] = {
                    name: (None if rec is None else round(delay + rec, 1)) for name, delay in ALERTS
                }
            cases.append(case)
    metrics = op.metrics()
    return {
        "replicas": replicas,
        "operator_source_sha256": op.source,
        "time_limit_s": limit,
        "observed_for_s": round(elapsed, 1),
        "cases": cases,
        "alerts_for_s": dict(ALERTS),
        "peer": _public(peer_result),
        "descheduler": {**_public(desched), "evictions": descheduler.evictions(desched)},
        "operator_actions": [a.get("results") for a in actions],
        "operator_metrics": {
            k: v for k, v in metrics.items() if "actions_total" in k or "detections_total" in k
        },
    }


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """A peer's result without its process, environment (credentials) or command line."""
    return {k: v for k, v in result.items() if k not in ("proc", "argv") and not k.startswith("_")}


def _alert_cell(c: dict[str, Any], name: str, observed: float) -> str:
    if "computed_at_alert_s" not in c:
        return "-"
    v = c["computed_at_alert_s"].get(name)
    return f"{v:.0f} s" if v is not None else f"not recovered ({observed:.0f} s after the fix)"


def render(r: dict[str, Any]) -> str:
    rows = []
    observed = float(r["observed_for_s"])
    for c in r["cases"]:
        if c["recovered"]:
            rec = f"{c['recovery_s']:.1f} s"
        elif c["first_err_image_pull_s"] is None:
            rec = "no ErrImagePull seen"
        else:
            rec = f"not healed within the window ({observed:.0f} s)"
        rows.append(
            [
                c["case"],
                c["who"],
                rec,
                c.get("fix_applied_after_first_failure_s"),
                *(_alert_cell(c, name, observed) for name, _ in ALERTS),
            ]
        )
    peer_info = r["peer"]
    des = r.get("descheduler") or {}
    skipped = [
        (WHO[PEER_NS], peer_info) if not peer_info.get("ready") else None,
        (WHO[DESCHED_NS], des) if des and not des.get("running") else None,
    ]
    for s in skipped:
        if s is not None:
            rows += [[what, s[0], "not run (see note)", None, "-", "-"] for _, what in APPS]
    alerts = r.get("alerts_for_s") or dict(ALERTS)
    out = table(
        f"Recovery: {r['replicas']} replicas, first ErrImagePull -> all replicas Running",
        [
            "case",
            "who",
            "recovery (measured)",
            "fix written after first failure (s)",
            *(
                f"human acts at {name} (for: {int(alerts[name]) // 60} min), computed"
                for name, _ in ALERTS
            ),
        ],
        rows,
    )
    for s in skipped:
        if s is not None:
            out += f"\n{s[0]} not run: {s[1].get('reason')}\n"
    if des.get("running"):
        out += (
            f"\ndescheduler: PodLifeTime maxPodLifeTimeSeconds={des.get('max_pod_lifetime_s')}, "
            f"states {list(descheduler.PULL_STATES)}, every {des.get('interval_s')} s; "
            f"{des.get('evictions')} evictions in its log.\n"
        )
    return out
