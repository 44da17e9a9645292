"""Reads the decision needs from the cluster: the owner chain, the pod's own credentials
(exactly the kubelet's), the policy's candidate secrets, and the node's platform."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pullmedic.core import policy as pol
from pullmedic.core import reference
from pullmedic.core.actions import ObjectRef
from pullmedic.core.detection import controller_of
from pullmedic.core.dockerconfig import PullSecret, SecretProblem
from pullmedic.core.keyring import Keyring
from pullmedic.core.kinds import TEMPLATE_FIX
from pullmedic.core.platforms import Platform
from pullmedic.kube.client import KubeApi, KubeError

# Images on a node change as it pulls and collects garbage: trust the list this long.
NODE_IMAGES_TTL = 60.0

OwnerChain = tuple[ObjectRef | None, ObjectRef | None, dict[str, Any] | None]


class Lookups:
    def __init__(
        self,
        kube: KubeApi,
        default_platform: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.default_platform = Platform.parse(default_platform)
        self.clock = clock
        self._nodes: dict[str, tuple[float, NodeFacts]] = {}

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
        if kind in TEMPLATE_FIX:  # a workload that owns its pods (through a ReplicaSet)
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

    async def node(self, name: str | None, *, fresh: bool = False) -> NodeFacts:
        """The node's platform and the images it holds (cached a minute; ``fresh`` reads
        the node again, for a question the cache may answer wrong)."""
        default = NodeFacts(self.default_platform, frozenset(), "")
        if not name:
            return default
        now = self.clock()
        hit = self._nodes.get(name)
        if hit is not None and now - hit[0] < NODE_IMAGES_TTL and not fresh:
            return hit[1]
        try:
            obj = await self.kube.get("Node", "", name)
        except KubeError:
            return hit[1] if hit is not None else default  # asked again next decision
        if obj is None:
            return NodeFacts(self.default_platform, frozenset(), name)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        facts = NodeFacts(
            Platform(
                labels.get("kubernetes.io/os", self.default_platform.os),
                labels.get("kubernetes.io/arch", self.default_platform.architecture),
            ),
            _image_names(obj),
            name,
        )
        self._nodes[name] = (now, facts)
        return facts

    async def template_keyring(
        self, ns: str, pull_secrets: tuple[str, ...], service_account: str
    ) -> Keyring:
        """The credentials a new pod from this spec will have: its own pull secrets, else
        (as the ServiceAccount admission plugin injects them) its ServiceAccount's."""
        names = pull_secrets
        if not names:
            try:
                sa = await self.kube.get("ServiceAccount", ns, service_account)
            except KubeError:
                sa = None
            names = tuple(str(r.get("name", "")) for r in (sa or {}).get("imagePullSecrets") or ())
        secrets = []
        for n in names:
            try:
                s = await self.secret(ns, n)
            except KubeError:
                s = None
            if s is not None:
                secrets.append(s)
        return Keyring.from_secrets(secrets)[0]

    async def platform(self, node: str | None) -> Platform:
        return (await self.node(node)).platform


@dataclass(frozen=True)
class NodeFacts:
    platform: Platform
    images: frozenset[str]  # canonical references the node reports holding
    name: str

    def holds(self, image: str) -> bool:
        try:
            return str(reference.parse(image)) in self.images
        except reference.InvalidReference:
            return False


def _image_names(node: Mapping[str, Any]) -> frozenset[str]:
    out: set[str] = set()
    for img in (node.get("status") or {}).get("images") or ():
        for n in (img or {}).get("names") or ():
            try:
                out.add(str(reference.parse(str(n))))
            except reference.InvalidReference:
                continue
    return frozenset(out)
