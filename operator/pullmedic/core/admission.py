"""Admission decisions: an object with pod specs in, warnings, a refusal or a patch out.

Pure: the webhook edge gathers diagnoses (within its budget) and asks here what to answer.
It never blocks what might recover by itself, and never changes a tag behind the user's
back: tag fixes are only ever suggested.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pullmedic.core import jsonpointer
from pullmedic.core.diagnosis import MIRROR_CAUSES, Cause, Diagnosis
from pullmedic.core.kinds import WITH_POD_SPEC
from pullmedic.core.policy import AdmissionMode

ORIGINAL_IMAGES = "pullmedic.dev/original-images"

CONTAINER_FIELDS = ("initContainers", "containers")

# Refused in Deny mode: the pull fails the same way forever. Only with high confidence
# (a 404 seen with credentials that can see the repository).
NEVER_RECOVERS = frozenset(
    {Cause.InvalidReference, Cause.TagNotFound, Cause.DigestNotFound, Cause.RepositoryNotFound}
)


@dataclass(frozen=True)
class ContainerImage:
    field: str  # containers | initContainers
    index: int
    name: str
    image: str

    @property
    def where(self) -> str:
        return f"{self.field}/{self.index}"


@dataclass(frozen=True)
class PodSpecView:
    """The pod spec of an admitted object, as admission would give it to the kubelet."""

    kind: str
    pointer: str
    spec: Mapping[str, Any]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @property
    def containers(self) -> list[ContainerImage]:
        out = []
        for f in CONTAINER_FIELDS:
            for i, c in enumerate(self.spec.get(f) or ()):
                if isinstance(c, Mapping) and isinstance(c.get("image"), str):
                    out.append(ContainerImage(f, i, str(c.get("name", "")), c["image"]))
        return out

    @property
    def pull_secrets(self) -> tuple[str, ...]:
        return tuple(
            str(r.get("name", ""))
            for r in self.spec.get("imagePullSecrets") or ()
            if isinstance(r, Mapping)
        )

    @property
    def service_account(self) -> str:
        return str(self.spec.get("serviceAccountName") or "default")


def pod_spec_of(obj: Mapping[str, Any] | None) -> PodSpecView | None:
    if not obj:
        return None
    kind = str(obj.get("kind", ""))
    pointer = WITH_POD_SPEC.get(kind)  # where the kind keeps its pod spec
    if pointer is None:
        return None
    cur: Any = obj
    for part in pointer.strip("/").split("/"):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    if not isinstance(cur, Mapping):
        return None
    meta_src = obj if kind == "Pod" else _template_meta(obj, kind)
    meta = (meta_src or {}).get("metadata") or {}
    own = obj.get("metadata") or {}
    return PodSpecView(
        kind,
        pointer,
        cur,
        dict(meta.get("labels") or {}),
        dict(own.get("annotations") or {}),
    )


def _template_meta(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    spec = obj.get("spec") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    tmpl = spec.get("template")
    return tmpl if isinstance(tmpl, Mapping) else None


def to_check(new: PodSpecView, old: PodSpecView | None) -> list[ContainerImage]:
    """Images to probe: all on create; on update only changed ones, or all when the pull
    secrets or the ServiceAccount changed (their credentials changed)."""
    if (
        old is None
        or old.pull_secrets != new.pull_secrets
        or (old.service_account != new.service_account)
    ):
        return new.containers
    before = {(c.field, c.name): c.image for c in old.containers}
    return [c for c in new.containers if before.get((c.field, c.name)) != c.image]


@dataclass(frozen=True)
class Checked:
    """One container's image and what the webhook learned of it in its budget."""

    container: ContainerImage
    diagnosis: Diagnosis | None  # None: not known within the budget
    mode: AdmissionMode = AdmissionMode.WARN  # of the policy that selects this image
    mirror: str | None = None  # a verified mirror image, when one was looked for


@dataclass(frozen=True)
class Answer:
    allowed: bool = True
    warnings: tuple[str, ...] = ()
    message: str = ""
    patch: tuple[dict[str, Any], ...] = field(default=())

    def response(self, uid: str) -> dict[str, Any]:
        import base64

        out: dict[str, Any] = {"uid": uid, "allowed": self.allowed}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if not self.allowed:
            out["status"] = {"code": 403, "reason": "Forbidden", "message": self.message}
        if self.patch:
            out["patchType"] = "JSONPatch"
            out["patch"] = base64.b64encode(json.dumps(list(self.patch)).encode()).decode()
        return out


def _warning(c: Checked) -> str | None:
    d = c.diagnosis
    if d is None:
        return (
            f"image {c.container.image} could not be checked in time; pullmedic keeps "
            "checking and reports failures as Events (pullmedic)"
        )
    if d.cause is Cause.ImageAvailable:
        return None
    fix = ""
    if d.fix is not None and d.fix.kind == "tag" and d.fix.image:
        fix = f"; {d.fix.image} exists ({d.fix.reason})"
    elif d.fix is not None and d.fix.kind == "secret" and d.fix.secret:
        fix = f"; pull secret {d.fix.secret} grants it"
    return f"image {c.container.image}: {d.cause}: {d.summary.rstrip('.')}{fix} (pullmedic)"[:512]


def decide(view: PodSpecView, checked: Sequence[Checked]) -> Answer:
    """Each image under the mode of the policy that selects it."""
    checked = [c for c in checked if c.mode is not AdmissionMode.OFF]
    if not checked:
        return Answer()
    warnings = [w for c in checked if (w := _warning(c)) is not None]
    fatal = [
        c
        for c in checked
        if c.mode is AdmissionMode.DENY
        and c.diagnosis is not None
        and c.diagnosis.cause in NEVER_RECOVERS
        and c.diagnosis.confidence == "high"
    ]
    if fatal:
        msg = "; ".join(w for c in fatal if (w := _warning(c)) is not None)
        return Answer(False, tuple(warnings), f"refused by pullmedic: {msg}"[:1024])
    patch: list[dict[str, Any]] = []
    originals: dict[str, str] = {}
    for c in checked:
        d = c.diagnosis
        if c.mode is not AdmissionMode.MUTATE or d is None or d.cause not in MIRROR_CAUSES:
            continue
        if not c.mirror:
            continue
        path = f"{view.pointer}/{c.container.field}/{c.container.index}/image"
        patch.append({"op": "test", "path": path, "value": c.container.image})
        patch.append({"op": "replace", "path": path, "value": c.mirror})
        originals[f"{c.container.field}/{c.container.name}"] = c.container.image
        warnings.append(
            f"image {c.container.image} rewritten to the verified mirror {c.mirror} "
            f"({d.cause}); the original is in annotation {ORIGINAL_IMAGES} (pullmedic)"
        )
    if originals:
        merged = {**_originals(view.annotations), **originals}
        value = json.dumps(merged, sort_keys=True)
        if view.annotations:
            key = jsonpointer.escape(ORIGINAL_IMAGES)
            patch.append({"op": "add", "path": f"/metadata/annotations/{key}", "value": value})
        else:
            patch.append(
                {"op": "add", "path": "/metadata/annotations", "value": {ORIGINAL_IMAGES: value}}
            )
    return Answer(True, tuple(warnings), "", tuple(patch))


def _originals(annotations: Mapping[str, str]) -> dict[str, str]:
    try:
        old = json.loads(annotations.get(ORIGINAL_IMAGES) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in old.items()} if isinstance(old, dict) else {}
