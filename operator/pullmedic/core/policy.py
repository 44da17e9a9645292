"""PullPolicy / ClusterPullPolicy as typed values: parsing and validation.

The CRD schema rejects malformed shapes at the apiserver; this module checks what a schema
cannot express and reports it as text for a ``Ready=False`` condition. Which policy governs
an image in a pod is :mod:`pullmedic.core.selection`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pullmedic.core.registrykeys import normalize_key
from pullmedic.core.tags import SemverRange

GROUP = "pullmedic.dev"
VERSION = "v1alpha1"
NAMESPACED_KIND = "PullPolicy"
CLUSTER_KIND = "ClusterPullPolicy"
PROTECTED_NAMESPACES = frozenset({"kube-system"})


class Mode(StrEnum):
    OBSERVE = "Observe"
    SUGGEST = "Suggest"
    REMEDIATE = "Remediate"


class AdmissionMode(StrEnum):
    OFF = "Off"  # installing changes nothing
    WARN = "Warn"  # admission warnings (kubectl prints them); always admitted
    DENY = "Deny"  # refuse what never recovers by itself; warn for the rest
    MUTATE = "Mutate"  # rewrite to a verified mirror when the registry cannot serve


class TagStrategy(StrEnum):
    HIGHEST_PATCH = "HighestPatch"
    SEMVER_RANGE = "SemverRange"
    CLOSEST_MATCH = "ClosestMatch"


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        return False


@dataclass(frozen=True)
class LabelSelector:
    """Kubernetes label selector semantics; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.expressions
        )


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Mirror:
    registry: str
    mirror: str


@dataclass(frozen=True)
class Alternative:
    """A moved repository: ``from`` is a glob over the image name (``*`` one path segment,
    ``**`` any), ``to`` the new name with ``$1``... for what the stars matched."""

    from_: str
    to: str

    def pattern(self) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(self.from_):
            if self.from_.startswith("**", i):
                out += "(.+?)"
                i += 2
            elif self.from_[i] == "*":
                out += "([^/]+)"
                i += 1
            else:
                out += re.escape(self.from_[i])
                i += 1
        return re.compile(out + r"\Z")

    def apply(self, name: str) -> str | None:
        m = self.pattern().match(name)
        if m is None:
            return None
        return re.sub(r"\$(\d+)", lambda g: m.group(int(g.group(1))), self.to)

    def problem(self) -> str | None:
        stars = self.pattern().groups
        refs = [int(n) for n in re.findall(r"\$(\d+)", self.to)]
        if any(n < 1 or n > stars for n in refs):
            return f"{self.to!r} refers to a capture {self.from_!r} does not have"
        if not self.from_ or not self.to:
            return "from and to are both required"
        return None


@dataclass(frozen=True)
class TagCorrection:
    enabled: bool = True
    strategy: TagStrategy = TagStrategy.HIGHEST_PATCH
    range: str | None = None
    allow_major_change: bool = False
    allow_latest: bool = False
    pin_digest: bool = False


@dataclass(frozen=True)
class Policy:
    kind: str
    name: str
    namespace: str | None
    mode: Mode = Mode.SUGGEST
    priority: int = 0
    generation: int = 0
    uid: str = ""
    pod_selector: LabelSelector = field(default_factory=LabelSelector)
    namespace_selector: LabelSelector | None = None
    namespaces: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    tags: TagCorrection = field(default_factory=TagCorrection)
    credentials_enabled: bool = True
    secrets: tuple[SecretRef, ...] = ()
    node_registries: tuple[str, ...] = ()  # nodes authenticate here themselves
    mirrors: tuple[Mirror, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    recreate_pods: bool = True
    patch_bare_pods: bool = True
    gitops_direct_patch: bool = False
    remediations_per_hour: int = 60
    admission: AdmissionMode = AdmissionMode.OFF
    audit: bool = False  # check running workloads' images would still pull

    @property
    def is_cluster(self) -> bool:
        return self.kind == CLUSTER_KIND

    @property
    def key(self) -> str:
        return (
            f"{self.kind}/{self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind}/{self.name}")
        )

    def selects_namespace(
        self, namespace: str, labels: Mapping[str, str] | None, operator_namespace: str | None
    ) -> bool:
        if not self.is_cluster:
            return namespace == self.namespace
        if namespace in self.namespaces:
            return True
        if namespace in PROTECTED_NAMESPACES or namespace == operator_namespace:
            return False
        if self.namespaces and self.namespace_selector is None:
            return False
        return (self.namespace_selector or LabelSelector()).matches(labels)

    def moved_to(self, names: Sequence[str]) -> tuple[Alternative, str] | None:
        """The first alternative matching any spelling of the image name (canonical,
        familiar), and the new name."""
        for alt in self.alternatives:
            for n in names:
                new = alt.apply(n)
                if new:
                    return alt, new
        return None

    def mirror_for(self, registry: str) -> str | None:
        for m in self.mirrors:
            if m.registry == registry:
                return m.mirror
        return None


class PolicyError(ValueError):
    """A policy that parsed as a schema but cannot be used; the message is for status."""


def _selector(raw: Any, where: str, problems: list[str]) -> LabelSelector:
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be an object")
        return LabelSelector()
    ml = raw.get("matchLabels") or {}
    exprs: list[Requirement] = []
    for i, e in enumerate(raw.get("matchExpressions") or []):
        op = e.get("operator")
        values = tuple(str(v) for v in (e.get("values") or []))
        if op in ("In", "NotIn") and not values:
            problems.append(f"{where}.matchExpressions[{i}]: operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            problems.append(f"{where}.matchExpressions[{i}]: operator {op} takes no values")
        exprs.append(Requirement(str(e.get("key", "")), str(op), values))
    return LabelSelector(tuple(sorted((str(k), str(v)) for k, v in ml.items())), tuple(exprs))


def _check_glob(g: str) -> str | None:
    if any(c.isspace() for c in g):
        return f"image glob {g!r} contains whitespace"
    if g.count("[") != g.count("]"):
        return f"image glob {g!r} has an unbalanced bracket"
    return None


def parse(body: Mapping[str, Any]) -> tuple[Policy, list[str]]:
    """Build a Policy from a custom resource body; problems say what makes it unusable."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    kind = str(body.get("kind") or NAMESPACED_KIND)
    problems: list[str] = []
    cluster = kind == CLUSTER_KIND
    own_ns = None if cluster else str(meta.get("namespace") or "")

    sel = spec.get("selector") or {}
    images = sel.get("images") or {}
    include = tuple(str(g) for g in images.get("include") or ())
    exclude = tuple(str(g) for g in images.get("exclude") or ())
    for g in include + exclude:
        if (msg := _check_glob(g)) is not None:
            problems.append(msg)
    tags = _tag_correction(spec.get("tagCorrection") or {}, problems)
    creds = spec.get("credentials") or {}
    secrets = _secrets(creds.get("secrets") or [], own_ns, problems)
    node_registries = _node_registries(creds.get("nodeRegistries") or (), problems)
    mirrors = _mirrors(spec.get("mirrors") or [], problems)
    alternatives = _alternatives(spec.get("alternatives") or [], problems)
    mode, admission = _modes(spec, problems)

    recovery = spec.get("recovery") or {}
    policy = Policy(
        kind=kind,
        name=str(meta.get("name", "")),
        namespace=own_ns,
        mode=mode,
        priority=int(spec.get("priority", 0)),
        generation=int(meta.get("generation", 0) or 0),
        uid=str(meta.get("uid", "")),
        pod_selector=_selector(sel.get("podSelector"), "selector.podSelector", problems),
        namespace_selector=(
            _selector(sel.get("namespaceSelector"), "selector.namespaceSelector", problems)
            if cluster and sel.get("namespaceSelector") is not None
            else None
        ),
        namespaces=tuple(str(n) for n in sel.get("namespaces") or ()) if cluster else (),
        include=include,
        exclude=exclude,
        tags=tags,
        credentials_enabled=bool(creds.get("enabled", True)),
        secrets=secrets,
        node_registries=node_registries,
        mirrors=mirrors,
        alternatives=alternatives,
        recreate_pods=bool(recovery.get("recreatePods", True)),
        patch_bare_pods=bool(recovery.get("patchBarePods", True)),
        gitops_direct_patch=bool((spec.get("gitops") or {}).get("allowDirectPatch", False)),
        remediations_per_hour=int((spec.get("rateLimit") or {}).get("remediationsPerHour", 60)),
        admission=admission,
        audit=bool((spec.get("audit") or {}).get("enabled", False)),
    )
    return policy, problems


def _tag_correction(tc: Mapping[str, Any], problems: list[str]) -> TagCorrection:
    """``spec.tagCorrection``; a range is checked with the parser the prober ranks with."""
    try:
        strategy = TagStrategy(tc.get("strategy", TagStrategy.HIGHEST_PATCH))
    except ValueError:
        problems.append(f"tagCorrection.strategy {tc.get('strategy')!r} is not known")
        strategy = TagStrategy.HIGHEST_PATCH
    rng = tc.get("range")
    if strategy is TagStrategy.SEMVER_RANGE:
        if not rng:
            problems.append("tagCorrection.strategy SemverRange needs tagCorrection.range")
        else:
            try:
                SemverRange(str(rng))
            except ValueError as exc:
                problems.append(
                    f"tagCorrection.range {rng!r} is not a semver constraint like '^1.4' ({exc})"
                )
    return TagCorrection(
        enabled=bool(tc.get("enabled", True)),
        strategy=strategy,
        range=str(rng) if rng else None,
        allow_major_change=bool(tc.get("allowMajorChange", False)),
        allow_latest=bool(tc.get("allowLatest", False)),
        pin_digest=bool(tc.get("pinDigest", False)),
    )


def _secrets(
    raw: Sequence[Mapping[str, Any]], own_ns: str | None, problems: list[str]
) -> tuple[SecretRef, ...]:
    """``spec.credentials.secrets``: a PullPolicy (``own_ns`` set) may name only its own
    namespace's secrets; a ClusterPullPolicy must name each one's namespace."""
    secrets: list[SecretRef] = []
    for i, s in enumerate(raw):
        ns = s.get("namespace")
        if own_ns is not None and ns not in (None, own_ns):
            problems.append(
                f"credentials.secrets[{i}] names namespace {ns!r}: a PullPolicy may only use "
                f"secrets of its own namespace {own_ns!r} (use a ClusterPullPolicy)"
            )
            continue
        if own_ns is None and not ns:
            problems.append(f"credentials.secrets[{i}] needs a namespace in a ClusterPullPolicy")
            continue
        secrets.append(SecretRef(str(ns or own_ns), str(s.get("name", ""))))
    return tuple(secrets)


def _node_registries(raw: Sequence[Any], problems: list[str]) -> tuple[str, ...]:
    """``spec.credentials.nodeRegistries``, in the kubelet's matchImages syntax."""
    node_registries = tuple(str(r) for r in raw)
    for i, r in enumerate(node_registries):
        try:
            normalize_key(r)
        except ValueError as exc:
            problems.append(f"credentials.nodeRegistries[{i}]: {exc}")
    return node_registries


def _mirrors(raw: Sequence[Mapping[str, Any]], problems: list[str]) -> tuple[Mirror, ...]:
    """``spec.mirrors``: one mirror per registry, never the registry itself."""
    mirrors: list[Mirror] = []
    seen: set[str] = set()
    for i, m in enumerate(raw):
        reg, mir = str(m.get("registry", "")), str(m.get("mirror", ""))
        if reg == mir:
            problems.append(f"mirrors[{i}]: a registry cannot be its own mirror")
        if reg in seen:
            problems.append(f"mirrors[{i}]: registry {reg!r} has more than one mirror")
        seen.add(reg)
        mirrors.append(Mirror(reg, mir))
    return tuple(mirrors)


def _alternatives(raw: Sequence[Mapping[str, Any]], problems: list[str]) -> tuple[Alternative, ...]:
    """``spec.alternatives``; an unusable one is reported and left out."""
    alternatives: list[Alternative] = []
    for i, a in enumerate(raw):
        alt = Alternative(str(a.get("from", "")), str(a.get("to", "")))
        if (msg := alt.problem()) is not None:
            problems.append(f"alternatives[{i}]: {msg}")
            continue
        alternatives.append(alt)
    return tuple(alternatives)


def _modes(spec: Mapping[str, Any], problems: list[str]) -> tuple[Mode, AdmissionMode]:
    """``spec.mode`` (Observe when unknown: never act on a policy that is not understood)
    and ``spec.admission.mode`` (Off when unknown)."""
    try:
        mode = Mode(spec.get("mode", Mode.SUGGEST))
    except ValueError:
        problems.append(f"mode {spec.get('mode')!r} is not Observe, Suggest or Remediate")
        mode = Mode.OBSERVE
    try:
        admission = AdmissionMode((spec.get("admission") or {}).get("mode", AdmissionMode.OFF))
    except ValueError:
        problems.append("admission.mode must be Off, Warn, Deny or Mutate")
        admission = AdmissionMode.OFF
    return mode, admission
