"""Reads the decision needs from the cluster: the owner chain, the pod's own credentials
(exactly the kubelet's), the policy's candidate secrets, and the node's platform."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pullmedic import policy as pol
from pullmedic.detection import controller_of
from pullmedic.keyring import Keyring, PullSecret, SecretProblem
from pullmedic.kube import KubeApi, KubeError
from pullmedic.planning import ObjectRef
from pullmedic.platforms import Platform

OwnerChain = tuple[ObjectRef | None, ObjectRef | None, dict[str, Any] | None]


class Lookups:
    def __init__(self, kube: KubeApi, default_platform: str) -> None:
        self.kube = kube
        self.default_platform = Platform.parse(default_platform)
        self._node_platforms: dict[str, Platform] = {}

    async def owner_chain(self, pod: Mapping[str, Any]) -> OwnerChain:
        """(workload to fix, the Job between a CronJob and its pods, the workload object)."""
        ns = pod["metadata"]["namespace"]
        ref = controller_of(pod)
        if ref is None:
            return None, None, None
        kind, name = ref.get("kind", ""), ref.get("name", "")
        if kind == "ReplicaSet":
            rs = await self.kube.get("ReplicaSet", ns, name)
            up = controller_of(rs) if rs else None
            if up is None or up.get("kind") != "Deployment":
                return ObjectRef("ReplicaSet", ns, name, ref.get("uid", "")), None, rs
            dep = await self.kube.get("Deployment", ns, up.get("name", ""))
            if dep is None:  # being deleted: never mistake its pods for bare pods
                return ObjectRef("ReplicaSet", ns, name, ref.get("uid", "")), None, rs
            return (
                ObjectRef("Deployment", ns, dep["metadata"]["name"], dep["metadata"]["uid"]),
                None,
                dep,
            )
        if kind == "Job":
            job = await self.kube.get("Job", ns, name)
            job_ref = ObjectRef("Job", ns, name, ref.get("uid", ""))
            up = controller_of(job) if job else None
            if up is None or up.get("kind") != "CronJob":
                return job_ref, None, job
            cj = await self.kube.get("CronJob", ns, up.get("name", ""))
            if cj is None:
                return job_ref, None, job
            return ObjectRef("CronJob", ns, up.get("name", ""), cj["metadata"]["uid"]), job_ref, cj
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            obj = await self.kube.get(kind, ns, name)
            if obj is None:
                return ObjectRef(kind, ns, name, ref.get("uid", "")), None, None
            return ObjectRef(kind, ns, name, obj["metadata"]["uid"]), None, obj
        return ObjectRef(kind, ns, name, ref.get("uid", "")), None, None

    async def secret(self, ns: str, name: str) -> PullSecret | None:
        obj = await self.kube.get("Secret", ns, name)
        if obj is None:
            return None
        return PullSecret(
            namespace=ns, name=name, type=str(obj.get("type", "")), data=dict(obj.get("data") or {})
        )

    async def keyrings(
        self, pod: Mapping[str, Any], policy: pol.Policy | None
    ) -> tuple[Keyring, dict[str, Keyring], list[SecretProblem]]:
        """Exactly the kubelet's credentials for this pod, plus the policy's candidates."""
        ns = pod["metadata"]["namespace"]
        own = [
            s
            for n in pod["spec"]["imagePullSecrets"]
            if (s := await self.secret(ns, n.get("name", ""))) is not None
        ]
        keyring, problems = Keyring.from_secrets(own)
        candidates: dict[str, Keyring] = {}
        if policy is not None and policy.credentials_enabled:
            for ref in policy.secrets:
                if not policy.is_cluster and ref.namespace != policy.namespace:
                    continue  # defence in depth: parse() already refuses these
                s = await self.secret(ref.namespace, ref.name)
                if s is not None:
                    candidates[str(ref)], _ = Keyring.from_secrets([s])
        return keyring, candidates, problems

    async def platform(self, node: str | None) -> Platform:
        default = self.default_platform
        if not node:
            return default
        if node not in self._node_platforms:
            try:
                obj = await self.kube.get("Node", "", node)
            except KubeError:
                return default  # not cached: the next decision asks again
            labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
            platform = Platform(
                labels.get("kubernetes.io/os", default.os),
                labels.get("kubernetes.io/arch", default.architecture),
            )
            if obj is None:
                return platform
            self._node_platforms[node] = platform
        return self._node_platforms[node]
