"""Recovery on the real node: a tag typo and a missing pull secret, healed three ways side
by side (four for the missing secret), in repeated runs.

Each run creates, at the same moment, one Deployment per (case, party) in namespaces of
its own, on the sandbox's real kubelet:

(a) ``rec-pullmedic-<run>``: pullmedic (Remediate) alone.
(b) ``rec-kubelet-<run>``: the kubelet alone; a "human" applies the fix the instant the
    first ErrImagePull shows (the Deployment's tag is patched; the pull secret is created
    and added to the ServiceAccount; no pod is recreated).
(c) ``rec-desched-<run>``: the same human fix plus descheduler's PodLifeTime (built from
    its module) evicting pods waiting in ImagePullBackOff/ErrImagePull, running all along.
(d) ``rec-patcher-<run>``: the missing-secret Deployment only, and titansoft
    imagepullsecret-patcher (:mod:`bench.peer`, built from a checkout of its repository)
    started the instant its first ErrImagePull shows, with the pull secret as its source
    and every other namespace excluded. It copies the secret into the namespace and adds it
    to the ``default`` ServiceAccount, and that is all: it fixes no tag and recreates no
    pod, and pods keep the pull secrets they were created with. The moment the
    ServiceAccount got the secret is recorded, so the report can tell "it did its part"
    from "the pods healed". Without a checkout it is not run, and the results say why.

The clock runs from each Deployment's first ErrImagePull to all its replicas Running
(with the fixed image for the typo). Figures: p50 / p90 / max over the runs, per case
and party. The human baselines at alert time are computed from (b) and (c): the default
kube-prometheus alert's ``for`` plus the measured recovery.
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
    fmt,
    labelled,
    namespace,
    percentile,
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
DESCHED_NS = "rec-desched"
PATCHER_NS = "rec-patcher"
SECRETS_NS = "bench-secrets"
# descheduler: the most eager settings that still make sense (a user's are usually minutes).
DESCHED_LIFETIME_S = 5
DESCHED_INTERVAL_S = 5
# kube-prometheus (kubernetes-mixin) default alerts a stuck pod trips, with their `for`.
ALERTS: tuple[tuple[str, int], ...] = (("KubePodNotReady", 15 * 60), ("KubeContainerWaiting", 3600))
WHO = {
    OP_NS: "pullmedic (Remediate)",
    BASE_NS: "kubelet alone + human fix",
    DESCHED_NS: "human fix + descheduler PodLifeTime",
    PATCHER_NS: "titansoft imagepullsecret-patcher",
}
APPS = (("typo", "tag typo"), ("private", "missing pull secret"))
HUMAN = (BASE_NS, DESCHED_NS)


def _apps(party: str) -> tuple[tuple[str, str], ...]:
    """The cases a party is given: the patcher only ever copies a pull secret."""
    return tuple(a for a in APPS if party != PATCHER_NS or a[0] == "private")


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
    runs = 2 if quick else 10
    replicas = 3  # one real node: 30 pods a run
    b = start_bench("recovery", real_node=True)
    try:
        # The human fix alone never heals the missing secret (its pods predate the secret):
        # each run waits 60 s at most, and that case says "not healed within" it.
        return _run(b, runs, replicas, 60.0)
    finally:
        b.stop()


def _ns(party: str, run: int) -> str:
    return f"{party}-{run}"


def _run(b: Bench, runs: int, replicas: int, limit: float) -> dict[str, Any]:
    regs = b.sb.registries
    for tag in ("2.0.0", "2.0.1", "2.0.3"):
        push_image(regs.open, "rec/web", tag)
    push_image(regs.bearer, "private/rec-api", "1.0")
    bad = f"{regs.open.host}/rec/web:2.0.9"
    good = f"{regs.open.host}/rec/web:2.0.3"
    private = f"{regs.bearer.host}/private/rec-api:1.0"

    namespace(b, SECRETS_NS)
    bob = regs.bearer.users["bob"]
    b.core.create_namespaced_secret(
        SECRETS_NS, dockerconfig_secret("regcred", SECRETS_NS, regs.bearer.host, "bob", bob)
    )
    cluster_policy(
        b,
        "bench-recovery",
        [_ns(OP_NS, i) for i in range(runs)],  # no other namespace is selected
        credentials={"secrets": [{"namespace": SECRETS_NS, "name": "regcred"}]},
    )
    op = Operator(b, "operator")
    op.start()
    wait_policy_ready(b, "bench-recovery")
    desched = descheduler.start(
        b,
        [_ns(DESCHED_NS, i) for i in range(runs)],
        max_pod_lifetime_s=DESCHED_LIFETIME_S,
        interval_s=DESCHED_INTERVAL_S,
    )
    patcher = peer.setup(b)  # once: a failed build (a clone attempt) is not retried per run
    if not patcher["ready"]:
        say(f"recovery: {WHO[PATCHER_NS]} not run: {patcher['reason']}")
    parties = [OP_NS, BASE_NS] + ([DESCHED_NS] if desched.get("running") else [])
    parties += [PATCHER_NS] if patcher["ready"] else []
    tracker = PodTracker(b, "bench=recovery").start()
    fixes: dict[tuple[str, str], float] = {}
    cases: list[dict[str, Any]] = []
    started = time.time()
    for run in range(runs):
        cases += _round(
            b, tracker, op, run, parties, replicas, limit, bad, good, private, fixes, patcher
        )
    tracker.stop()
    descheduler.stop(desched)
    metrics = op.metrics()
    return {
        "replicas": replicas,
        "runs": runs,
        "node": b.sb.node_kind,
        "operator_source_sha256": op.source,
        "time_limit_s": limit,
        "observed_for_s": round(time.time() - started, 1),
        "cases": cases,
        "summary": summarize(cases),
        "alerts_for_s": dict(ALERTS),
        "descheduler": {**_public(desched), "evictions": descheduler.evictions(desched)},
        "peer": _public(patcher),
        "operator_metrics": {
            k: v for k, v in metrics.items() if "actions_total" in k or "detections_total" in k
        },
    }


def _round(
    b: Bench,
    tracker: PodTracker,
    op: Operator,
    run: int,
    parties: list[str],
    replicas: int,
    limit: float,
    bad: str,
    good: str,
    private: str,
    fixes: dict[tuple[str, str], float],
    patcher: dict[str, Any],
) -> list[dict[str, Any]]:
    spaces = {party: _ns(party, run) for party in parties}
    for ns in spaces.values():
        namespace(b, ns)
    for ns in (spaces[p] for p in parties if p in HUMAN):
        tracker.on_first_fail[(ns, "typo")] = partial(_human_fix_tag, b, ns, good, fixes)
        tracker.on_first_fail[(ns, "private")] = partial(_human_fix_secret, b, ns, fixes)
    mine: dict[str, Any] = {}
    if PATCHER_NS in spaces:
        # Prepared once this run's namespaces all exist: every one but its own is excluded.
        # Started at its Deployment's first ErrImagePull, the human's moment.
        mine = peer.prepare(b, spaces[PATCHER_NS], patcher)
        tracker.on_first_fail[(spaces[PATCHER_NS], "private")] = partial(peer.launch, b, mine)
    created_with = {"typo": bad, "private": private}
    healed_with = {"typo": good, "private": private}
    for party, ns in spaces.items():
        for app, _ in _apps(party):
            tracker.goal(ns, app, replicas, healed_with[app])
    deployments = sum(len(_apps(p)) for p in spaces)
    say(f"recovery run {run + 1}: {deployments} Deployments x {replicas} replicas")
    created = time.time()
    for party, ns in spaces.items():
        for app, _ in _apps(party):
            b.apps.create_namespaced_deployment(
                ns, labelled(deployment(app, created_with[app], replicas), "recovery")
            )

    def met() -> bool:
        with tracker.lock:
            return all(
                tracker.goals[(ns, app)].met_at is not None
                for party, ns in spaces.items()
                for app, _ in _apps(party)
            )

    try:
        wait_until(met, limit, every=0.5)
    except Exception as e:  # a case that never heals is a result, not a crash
        say(f"recovery run {run + 1}: {e}")
    if mine:
        peer.stop(mine)
    actions = [r for r in op.trace() if r.get("k") == "action"]
    out = []
    for party, ns in spaces.items():
        for app, what in _apps(party):
            g = tracker.goals[(ns, app)]
            ff = tracker.first_fail.get((ns, app))
            rec = None if g.met_at is None or ff is None else round(g.met_at - ff, 2)
            fix_at: float | None = None
            if party == OP_NS:
                action = next((a for a in actions if f"/{ns}/{app}-" in str(a.get("g"))), None)
                fix_at = float(action["t"]) if action else None
            elif party == PATCHER_NS:  # its whole fix: the secret on the ServiceAccount
                fix_at = mine.get("service_account_patched_at")
            else:
                fix_at = fixes.get((ns, app))
            case: dict[str, Any] = {
                "run": run,
                "case": what,
                "who": WHO[party],
                "namespace": ns,
                "first_err_image_pull_s": None if ff is None else round(ff - created, 2),
                "recovery_s": rec,
                "recovered": rec is not None,
                "fix_applied_after_first_failure_s": (
                    round(fix_at - ff, 2) if fix_at is not None and ff is not None else None
                ),
            }
            out.append(case)
    for ns in spaces.values():  # free the node for the next run
        b.core.delete_namespace(ns)
    return out


def summarize(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p50 / p90 / max recovery per (case, party) over the runs; at-alert figures computed
    from the measured p50 for the human parties."""
    out = []
    for _, what in APPS:
        for who in WHO.values():
            mine = [c for c in cases if c["case"] == what and c["who"] == who]
            if not mine:
                continue
            rec = [float(c["recovery_s"]) for c in mine if c["recovered"]]
            row: dict[str, Any] = {
                "case": what,
                "who": who,
                "runs": len(mine),
                "recovered": len(rec),
                "p50_s": percentile(rec, 50),
                "p90_s": percentile(rec, 90),
                "max_s": max(rec) if rec else None,
            }
            if who == WHO[PATCHER_NS]:
                # It did its part when the ServiceAccount has the secret, healed or not.
                done = [
                    float(c["fix_applied_after_first_failure_s"])
                    for c in mine
                    if c["fix_applied_after_first_failure_s"] is not None
                ]
                row["service_account_patched"] = len(done)
                row["service_account_patched_p50_s"] = percentile(done, 50)
            if who in (WHO[p] for p in HUMAN) and rec:
                row["computed_at_alert_p50_s"] = {
                    name: round(delay + float(row["p50_s"]), 1) for name, delay in ALERTS
                }
            out.append(row)
    return out


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """A peer's result without its process, environment (credentials) or command line."""
    return {k: v for k, v in result.items() if k not in ("proc", "argv") and not k.startswith("_")}


def render(r: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for row in r["summary"]:
        alerts = row.get("computed_at_alert_p50_s") or {}
        rows.append(
            [
                row["case"],
                row["who"],
                f"{row['recovered']}/{row['runs']}",
                row["p50_s"],
                row["p90_s"],
                row["max_s"],
                *(f"{alerts[name]:.0f} s" if name in alerts else "-" for name, _ in ALERTS),
            ]
        )
    if not (r.get("peer") or {}).get("ready"):  # its row says so, the note says why
        rows.append([APPS[1][1], WHO[PATCHER_NS], "not run", None, None, None, "-", "-"])
    out = table(
        f"Recovery on the {r.get('node', 'real')} node: {r['replicas']} replicas, "
        f"{r['runs']} runs, first ErrImagePull -> all replicas Running (s)",
        [
            "case",
            "who",
            "recovered",
            "p50",
            "p90",
            "max",
            *(f"human acts at {name} (p50, computed)" for name, _ in ALERTS),
        ],
        rows,
    )
    out += _patcher_note(r)
    des = r.get("descheduler") or {}
    if des.get("running"):
        out += (
            f"\ndescheduler: PodLifeTime maxPodLifeTimeSeconds={des.get('max_pod_lifetime_s')}, "
            f"states {list(descheduler.PULL_STATES)}, every {des.get('interval_s')} s; "
            f"{des.get('evictions')} evictions in its log.\n"
        )
    elif des:
        out += f"\ndescheduler not run: {des.get('reason')}\n"
    return out


def _patcher_note(r: dict[str, Any]) -> str:
    """Why the patcher has no figures, or what it did: a ServiceAccount it patched and pods
    that still did not heal are two different facts."""
    who = WHO[PATCHER_NS]
    info = r.get("peer")
    if info is None:
        return f"\n{who} not run: not part of this run (these results have no patcher data).\n"
    if not info.get("ready"):
        return f"\n{who} not run: {info.get('reason')}\n"
    row = next((x for x in r["summary"] if x["who"] == who), None)
    if row is None:
        return f"\n{who}: ready, but no run of it is in these results.\n"
    patched = row.get("service_account_patched", 0)
    when = (
        f", p50 {fmt(row.get('service_account_patched_p50_s'))} s after the first ErrImagePull"
        if patched
        else ""
    )
    return (
        f"\n{who}: started at each run's first ErrImagePull of its missing-secret Deployment; "
        f"the `default` ServiceAccount had its secret in {patched}/{row['runs']} runs{when}; "
        f"its pods healed in {row['recovered']}/{row['runs']} (pods keep the pull secrets "
        "they were created with, and it recreates none).\n"
    )
