"""Recovery: a tag typo and a missing pull secret, healed three ways side by side.

In one sandbox, at real kubelet timing, four 10-replica Deployments are created at the
same moment: {typo, private} x {pullmedic namespace, kubelet-alone namespace}. In the
kubelet-alone namespace a "human" applies the fix the instant the first ErrImagePull
shows (the Deployment's tag is patched; the pull secret is created and added to the
ServiceAccount; no pod is recreated). The clock runs from each Deployment's first
ErrImagePull to all its replicas Running (with the fixed image for the typo).
The peer (titansoft imagepullsecret-patcher) is attempted by :mod:`bench.peer`.
"""

from __future__ import annotations

import time
from typing import Any

from bench import peer
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
SECRETS_NS = "bench-secrets"


def _human_fix_tag(b: Bench, ns: str, good: str, log: dict[str, float]) -> None:
    log["typo"] = time.time()
    b.apps.patch_namespaced_deployment(
        "typo",
        ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": good}]}}}},
    )


def _human_fix_secret(b: Bench, ns: str, log: dict[str, float]) -> None:
    log["private"] = time.time()
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

    for ns in (OP_NS, BASE_NS, SECRETS_NS):
        namespace(b, ns)
    bob = regs.bearer.users["bob"]
    b.core.create_namespaced_secret(
        SECRETS_NS, dockerconfig_secret("regcred", SECRETS_NS, regs.bearer.host, "bob", bob)
    )
    cluster_policy(
        b,
        "bench-recovery",
        [OP_NS],  # the kubelet-alone namespace is not selected
        credentials={"secrets": [{"namespace": SECRETS_NS, "name": "regcred"}]},
    )
    op = Operator(b, "operator")
    op.start()
    wait_policy_ready(b, "bench-recovery")

    peer_result = peer.prepare(b, PEER_NS, private, replicas)

    tracker = PodTracker(b, "bench=recovery").start()
    fixes: dict[str, float] = {}
    tracker.on_first_fail[(BASE_NS, "typo")] = lambda: _human_fix_tag(b, BASE_NS, good, fixes)
    tracker.on_first_fail[(BASE_NS, "private")] = lambda: _human_fix_secret(b, BASE_NS, fixes)
    for ns in (OP_NS, BASE_NS):
        tracker.goal(ns, "typo", replicas, good)
        tracker.goal(ns, "private", replicas, private)
    if peer_result.get("running"):
        tracker.goal(PEER_NS, "private", replicas, private)

    say("recovery: creating 4 Deployments x 10 replicas")
    created = time.time()
    for ns in (OP_NS, BASE_NS):
        b.apps.create_namespaced_deployment(
            ns, labelled(deployment("typo", bad, replicas), "recovery")
        )
        b.apps.create_namespaced_deployment(
            ns, labelled(deployment("private", private, replicas), "recovery")
        )
    if peer_result.get("running"):
        b.apps.create_namespaced_deployment(
            PEER_NS, labelled(deployment("private", private, replicas), "recovery")
        )
    wait_until(tracker.all_met, limit, every=0.5)
    elapsed = time.time() - created
    tracker.stop()
    peer.stop(peer_result)

    trace = op.trace()
    actions = [r for r in trace if r.get("k") == "action"]
    cases = []
    for ns, who in ((OP_NS, "pullmedic (Remediate)"), (BASE_NS, "kubelet alone + human fix")):
        for app, what in (("typo", "tag typo"), ("private", "missing pull secret")):
            g = tracker.goals[(ns, app)]
            ff = tracker.first_fail.get((ns, app))
            rec = None if g.met_at is None or ff is None else round(g.met_at - ff, 2)
            action = next(
                (a for a in actions if f"/{ns}/{app}-" in str(a.get("g"))),
                None,
            )
            cases.append(
                {
                    "case": what,
                    "who": who,
                    "namespace": ns,
                    "first_err_image_pull_s": None if ff is None else round(ff - created, 2),
                    "recovery_s": rec,
                    "recovered": rec is not None,
                    "fix_applied_after_first_failure_s": (
                        round(action["t"] - ff, 2)
                        if action and ff
                        else round(fixes[app] - ff, 2)
                        if ns == BASE_NS and app in fixes and ff
                        else None
                    ),
                }
            )
    if peer_result.get("running"):
        g = tracker.goals[(PEER_NS, "private")]
        ff = tracker.first_fail.get((PEER_NS, "private"))
        rec = None if g.met_at is None or ff is None else round(g.met_at - ff, 2)
        cases.append(
            {
                "case": "missing pull secret",
                "who": "titansoft imagepullsecret-patcher",
                "namespace": PEER_NS,
                "first_err_image_pull_s": None if ff is None else round(ff - created, 2),
                "recovery_s": rec,
                "recovered": rec is not None,
            }
        )
    metrics = op.metrics()
    return {
        "replicas": replicas,
        "operator_source_sha256": op.source,
        "time_limit_s": limit,
        "observed_for_s": round(elapsed, 1),
        "cases": cases,
        "peer": {k: v for k, v in peer_result.items() if k != "proc"},
        "operator_actions": [a.get("results") for a in actions],
        "operator_metrics": {
            k: v for k, v in metrics.items() if "actions_total" in k or "detections_total" in k
        },
    }


def render(r: dict[str, Any]) -> str:
    rows = []
    for c in r["cases"]:
        rec = (
            f"{c['recovery_s']:.1f} s"
            if c["recovered"]
            else f"not recovered in {r['observed_for_s']:.0f} s"
        )
        rows.append([c["case"], c["who"], rec, c.get("fix_applied_after_first_failure_s")])
    peer_info = r["peer"]
    if not peer_info.get("running"):
        rows.append(
            ["missing pull secret", "titansoft imagepullsecret-patcher", "not run (see note)", None]
        )
    out = table(
        f"Recovery: {r['replicas']} replicas, first ErrImagePull -> all replicas Running",
        ["case", "who", "recovery", "fix written after first failure (s)"],
        rows,
    )
    if not peer_info.get("running"):
        out += f"\nPeer not run: {peer_info.get('reason')}\n"
    return out
