"""An in-memory Kubernetes for the engine's scenario tests: state in, state out.

It implements the engine's ``KubeApi`` seam with the API server's semantics that matter to
pullmedic: JSON patch ``test`` ops (422 when they fail), resourceVersion bumps, 409 on
create of an existing object, uid preconditions on delete, and the status subresource.
Every write is logged, so a test asserts exactly which writes happened. Faults are
injected per (verb, kind): an error, or a hang until released.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pullmedic.core.diagnosis import Diagnosis
from pullmedic.kube.client import KubeError

Key = tuple[str, str, str]  # kind, namespace ("" for cluster-scoped), name


@dataclass
class Write:
    verb: str
    kind: str
    namespace: str
    name: str
    payload: Any = None
    dry_run: bool = False


@dataclass
class Fault:
    error: Exception | None = None
    hang: asyncio.Event | None = None
    times: int = 1_000_000  # how many calls it affects


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [_unescape(p) for p in path.lstrip("/").split("/")]
    cur = doc
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    return cur, parts[-1]


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for op in ops:
        try:
            parent, last = _pointer(out, op["path"])
            if op["op"] == "test":
                value = parent[int(last)] if isinstance(parent, list) else parent.get(last)
                if value != op["value"]:
                    raise KubeError(422, f"test failed at {op['path']}")
            elif op["op"] in ("add", "replace"):
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(op["value"])
                    elif op["op"] == "add":
                        parent.insert(int(last), op["value"])
                    else:
                        parent[int(last)] = op["value"]
                else:
                    if op["op"] == "replace" and last not in parent:
                        raise KubeError(422, f"replace of missing {op['path']}")
                    parent[last] = op["value"]
            elif op["op"] == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise KubeError(422, f"invalid patch at {op['path']}: {e}") from e
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch: objects merge key by key, null
    removes a key, anything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[Write] = []
        self.faults: dict[tuple[str, str], Fault] = {}
        self.calls = 0
        self.lost_answers: dict[tuple[str, str], int] = {}  # (verb, kind) -> how many
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)
        self.token_requests: list[tuple[str, str, dict[str, Any]]] = []

    # ---- setup -----------------------------------------------------------------------
    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta["resourceVersion"] = str(next(self._rv))
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        self.objects[key] = obj
        return obj

    def obj(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        return self.objects[(kind, ns, name)]

    def fail(self, verb: str, kind: str, error: Exception, times: int = 1_000_000) -> None:
        self.faults[(verb, kind)] = Fault(error=error, times=times)

    def hang(self, verb: str, kind: str) -> asyncio.Event:
        """Calls hang until the returned event is set (a dead pooled connection)."""
        release = asyncio.Event()
        self.faults[(verb, kind)] = Fault(hang=release)
        return release

    def lose_answer(self, verb: str, kind: str, times: int = 1) -> None:
        """The next writes are applied but their answer is lost (a reset mid-response)."""
        self.lost_answers[(verb, kind)] = times

    def _answer_lost(self, verb: str, kind: str) -> None:
        left = self.lost_answers.get((verb, kind), 0)
        if left > 0:
            self.lost_answers[(verb, kind)] = left - 1
            raise KubeError(0, "ProtocolError", maybe_applied=True)

    def heal(self) -> None:
        for f in self.faults.values():
            if f.hang is not None:
                f.hang.set()
        self.faults.clear()

    def written(self, verb: str | None = None, kind: str | None = None) -> list[Write]:
        return [
            w
            for w in self.writes
            if (verb is None or w.verb == verb)
            and (kind is None or w.kind == kind)
            and not w.dry_run
        ]

    def events(self, reason: str | None = None, on: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for (k, _, _), o in self.objects.items()
            if k == "Event"
            and (reason is None or o["reason"] == reason)
            and (on is None or o["involvedObject"]["name"] == on)
        ]

    async def _gate(self, verb: str, kind: str) -> None:
        self.calls += 1
        await asyncio.sleep(0)  # every call yields, like real I/O
        f = self.faults.get((verb, kind)) or self.faults.get((verb, "*"))
        if f is None or f.times <= 0:
            return
        f.times -= 1
        if f.hang is not None:
            await f.hang.wait()
        if f.error is not None:
            raise f.error

    # ---- KubeApi -----------------------------------------------------------------------
    async def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        await self._gate("get", kind)
        obj = self.objects.get((kind, ns, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def create(
        self, kind: str, ns: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        await self._gate("create", kind)
        body = copy.deepcopy(dict(body))
        body.setdefault("kind", kind)
        name = body["metadata"]["name"]
        if (kind, ns, name) in self.objects:
            raise KubeError(409, "AlreadyExists")
        self.writes.append(Write("create", kind, ns, name, body, dry_run))
        if dry_run:
            return body
        body["metadata"]["namespace"] = ns
        return copy.deepcopy(self.put(body))

    async def json_patch(
        self,
        kind: str,
        ns: str,
        name: str,
        ops: list[dict[str, Any]],
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        await self._gate("patch", kind)
        cur = self.objects.get((kind, ns, name))
        if cur is None:
            raise KubeError(404, "NotFound")
        new = apply_json_patch(cur, ops)
        self.writes.append(Write("patch", kind, ns, name, ops, dry_run))
        if dry_run:
            return new
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[(kind, ns, name)] = new
        self._answer_lost("patch", kind)
        return copy.deepcopy(new)

    async def patch_status(self, kind: str, ns: str, name: str, status: Mapping[str, Any]) -> None:
        await self._gate("patch_status", kind)
        cur = self.objects.get((kind, ns, name))
        if cur is None:
            return
        self.writes.append(Write("patch_status", kind, ns, name, copy.deepcopy(dict(status))))
        cur["status"] = merge_patch(cur.get("status") or {}, copy.deepcopy(dict(status)))

    async def delete(
        self, kind: str, ns: str, name: str, *, uid: str = "", dry_run: bool = False
    ) -> bool:
        await self._gate("delete", kind)
        cur = self.objects.get((kind, ns, name))
        if cur is None or (uid and cur["metadata"]["uid"] != uid):
            return False
        self.writes.append(Write("delete", kind, ns, name, None, dry_run))
        if not dry_run:
            del self.objects[(kind, ns, name)]
        self._answer_lost("delete", kind)
        return True

    async def list(self, kind: str, ns: str = "") -> list[dict[str, Any]]:
        await self._gate("list", kind)
        return [
            copy.deepcopy(o)
            for (k, n, _), o in sorted(self.objects.items())
            if k == kind and (not ns or n == ns)
        ]

    async def create_token(
        self, ns: str, service_account: str, request: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Like the API server: the ServiceAccount must exist (and match a uid
        precondition), a bound Pod must exist with that uid."""
        await self._gate("create", "TokenRequest")
        sa = self.objects.get(("ServiceAccount", ns, service_account))
        if sa is None:
            raise KubeError(404, "NotFound")
        want_uid = (request.get("metadata") or {}).get("uid")
        if want_uid and sa["metadata"]["uid"] != want_uid:
            raise KubeError(409, "Conflict")
        spec = dict(request.get("spec") or {})
        bound = spec.get("boundObjectRef")
        if bound:
            pod = self.objects.get(("Pod", ns, bound["name"]))
            if pod is None or pod["metadata"]["uid"] != bound.get("uid"):
                raise KubeError(404, "NotFound")
        self.token_requests.append((ns, service_account, copy.deepcopy(dict(request))))
        token = f"fake-sa-token-{ns}-{service_account}-{len(self.token_requests)}"
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": spec,
            "status": {"token": token},
        }

    async def version(self) -> dict[str, Any]:
        await self._gate("get", "Version")
        return {"gitVersion": "v1.36.3"}


@dataclass
class FakeProber:
    """Answers diagnoses from a table by image; counts what was asked."""

    answers: dict[str, Diagnosis] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    hang: asyncio.Event | None = None

    async def diagnose(self, image: str, *_: Any, **__: Any) -> Diagnosis:
        self.asked.append(image)
        if self.hang is not None:
            await self.hang.wait()
        return self.answers[image]
