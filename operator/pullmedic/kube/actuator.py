"""Applies plans to the cluster: idempotent, with preconditions, restart-safe.

Every write either tests the value it replaces (JSON patch ``test``) or checks the current
state first, so a plan applied twice — by a restarted operator, say — writes once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from pullmedic.core.actions import Action, ActionType, ObjectRef, Plan, Result
from pullmedic.core.metadata import precondition
from pullmedic.core.planning import MANAGED_SECRET_LABEL, SOURCE_ANNOTATION
from pullmedic.core.records import RECORD, RemediationRecord
from pullmedic.kube.client import KubeApi, KubeError

log = logging.getLogger(__name__)

# The writes that carry the remediation record with the fix (one patch); the others' record
# is written after them (``record``).
RECORD_CARRIERS = frozenset({ActionType.PATCH_WORKLOAD_IMAGE, ActionType.ADD_TEMPLATE_PULL_SECRET})


def _get_path(obj: Mapping[str, Any], pointer: str) -> Any:
    cur: Any = obj
    for part in pointer.strip("/").split("/"):
        if isinstance(cur, list):
            idx = int(part)
            if idx >= len(cur):
                return None
            cur = cur[idx]
        elif isinstance(cur, Mapping):
            cur = cur.get(part)
        else:
            return None
        if cur is None:
            return None
    return cur


class Actuator:
    def __init__(self, kube: KubeApi, *, dry_run: bool = False) -> None:
        self.kube = kube
        self.dry_run = dry_run

    async def apply(self, plan: Plan, *, started: float | None = None) -> list[Result]:
        """Apply in order; ``started`` (epoch seconds) stamps the record, taken before the
        first write so pods recreated by this plan are never older than its record."""
        at = time.time() if started is None else started
        results: list[Result] = []
        for action in plan.actions:
            try:
                results.append(await self._apply_one(plan, action, at))
            except KubeError as e:  # status 0: a timeout or reset, written or not is unknown
                results.append(Result(action, "failed", f"API {e}", unknown=e.maybe_applied))
                break  # later actions depend on earlier ones (copy before attach)
        return results

    async def apply_action(self, a: Action) -> Result:
        """One plan-independent action (the periodic refresh of managed secret copies)."""
        if a.type is not ActionType.COPY_SECRET:
            raise ValueError(f"{a.type} needs its plan")
        return await self._copy_secret(a)

    async def _apply_one(self, plan: Plan, a: Action, at: float) -> Result:
        if a.type in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.PATCH_POD_IMAGE):
            return await self._patch_image(plan, a, at)
        if a.type is ActionType.COPY_SECRET:
            return await self._copy_secret(a)
        if a.type is ActionType.ATTACH_PULL_SECRET:
            return await self._attach(a)
        if a.type is ActionType.ADD_TEMPLATE_PULL_SECRET:
            return await self._add_template_secret(plan, a, at)
        if a.type is ActionType.RECREATE_PODS:
            return await self._recreate(a)
        return Result(a, "skipped", "report only")

    async def _patch_image(self, plan: Plan, a: Action, at: float) -> Result:
        t = a.target
        obj = await self.kube.get(t.kind, t.namespace, t.name)
        if obj is None:
            return Result(a, "skipped", f"{t} is gone")
        current = _get_path(obj, a.container_path)
        if current == a.new_image:
            return Result(a, "unchanged", "already set")
        if current != a.old_image:
            return Result(a, "skipped", f"image changed meanwhile to {current!r}; not touching it")
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": a.container_path, "value": a.old_image},
            {"op": "replace", "path": a.container_path, "value": a.new_image},
        ]
        await self._write_fix(plan, a, at, obj, ops)
        return self._written(a, f"{a.old_image} -> {a.new_image}")

    async def _write_fix(
        self, plan: Plan, a: Action, at: float, obj: Mapping[str, Any], ops: list[dict[str, Any]]
    ) -> None:
        """One patch: the fix's ``ops`` and, on a workload, the fix's record, so the fix
        never lands without it. Never on a pod: pods are not ours to mark."""
        t = a.target
        if t.kind != "Pod":
            tested = precondition(obj, "resourceVersion") in ops  # covers the record's too
            ops = ops + [
                op
                for op in RECORD.store(obj, RemediationRecord.of(plan, a, at))
                if not (tested and op["op"] == "test")
            ]
        await self.kube.json_patch(t.kind, t.namespace, t.name, ops, dry_run=self.dry_run)

    def _written(self, a: Action, detail: str) -> Result:
        return Result(a, "dry-run" if self.dry_run else "applied", detail)

    async def record(
        self, plan: Plan, a: Action, workload: ObjectRef, *, started: float | None = None
    ) -> None:
        """Note a non-image remediation (secrets, recreation) on the workload for humans."""
        obj = await self.kube.get(workload.kind, workload.namespace, workload.name)
        if obj is None or self.dry_run:
            return
        at = time.time() if started is None else started
        await self.kube.json_patch(
            workload.kind,
            workload.namespace,
            workload.name,
            RECORD.store(obj, RemediationRecord.of(plan, a, at)),
        )

    async def _copy_secret(self, a: Action) -> Result:
        assert a.source is not None
        src = await self.kube.get("Secret", a.source.namespace, a.source.name)
        if src is None:
            return Result(a, "failed", f"source secret {a.source} not found")
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": a.secret,
                "namespace": a.target.namespace,
                "labels": {MANAGED_SECRET_LABEL: "true"},
                "annotations": {SOURCE_ANNOTATION: str(a.source)},
            },
            "type": src.get("type"),
            "data": src.get("data") or {},
        }
        existing = await self.kube.get("Secret", a.target.namespace, a.secret)
        if existing is None:
            if self.dry_run:
                return Result(a, "dry-run")
            try:
                await self.kube.create("Secret", a.target.namespace, body)
            except KubeError as e:
                if e.status != 409:
                    raise
                return Result(a, "unchanged", "created concurrently")
            return Result(a, "applied", f"copied {a.source} (names only; content never logged)")
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_SECRET_LABEL) != "true":
            return Result(
                a,
                "failed",
                f"secret {a.target.namespace}/{a.secret} exists and is "
                "not managed by pullmedic; not overwriting it",
            )
        if existing.get("data") == body["data"] and existing.get("type") == body["type"]:
            return Result(a, "unchanged", "copy is current")
        ops = [
            precondition(existing, "resourceVersion"),
            {"op": "replace", "path": "/data", "value": body["data"]},
        ]
        await self.kube.json_patch(
            "Secret", a.target.namespace, a.secret, ops, dry_run=self.dry_run
        )
        return self._written(a, f"refreshed copy of {a.source}")

    async def _attach(self, a: Action) -> Result:
        t = a.target
        for _ in range(3):
            sa = await self.kube.get("ServiceAccount", t.namespace, t.name)
            if sa is None:
                return Result(a, "failed", f"ServiceAccount {t.namespace}/{t.name} not found")
            refs = sa.get("imagePullSecrets") or []
            if any(r.get("name") == a.secret for r in refs):
                return Result(a, "unchanged", "already attached")
            ops: list[dict[str, Any]] = [
                precondition(sa, "resourceVersion"),
                {
                    "op": "add",
                    "path": "/imagePullSecrets/-" if refs else "/imagePullSecrets",
                    "value": {"name": a.secret} if refs else [{"name": a.secret}],
                },
            ]
            try:
                await self.kube.json_patch(
                    "ServiceAccount", t.namespace, t.name, ops, dry_run=self.dry_run
                )
            except KubeError as e:
                if e.status in (409, 422):
                    continue  # someone else wrote it: read again
                raise
            return self._written(a, f"attached {a.secret}")
        return Result(a, "failed", "ServiceAccount kept changing")

    async def _add_template_secret(self, plan: Plan, a: Action, at: float) -> Result:
        t = a.target
        obj = await self.kube.get(t.kind, t.namespace, t.name)
        if obj is None:
            return Result(a, "skipped", f"{t} is gone")
        list_path = a.container_path.removesuffix("/-")
        current = _get_path(obj, list_path) or []
        if any(isinstance(r, Mapping) and r.get("name") == a.secret for r in current):
            return Result(a, "unchanged", "already in the template")
        ops: list[dict[str, Any]] = [
            precondition(obj, "resourceVersion"),
            {"op": "add", "path": a.container_path, "value": {"name": a.secret}},
        ]
        await self._write_fix(plan, a, at, obj, ops)
        return self._written(a, f"added {a.secret}")

    async def _recreate(self, a: Action) -> Result:
        deleted = 0
        for p in a.pods:
            if await self.kube.delete("Pod", p.namespace, p.name, uid=p.uid, dry_run=self.dry_run):
                deleted += 1
        outcome = "dry-run" if self.dry_run else ("applied" if deleted else "unchanged")
        return Result(a, outcome, f"deleted {deleted} of {len(a.pods)} stuck pods")
