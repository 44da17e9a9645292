"""The sandbox node: a kubelet's image-pull behaviour done for real against real registries.

No container runs. Everything else a pod-owning operator can observe is real: the Node and
its Lease, scheduling (pods/binding, as the scheduler does), the pulls themselves (HTTP
against the registries via :mod:`sandbox.pull`, containerd-style), the pod status the
kubelet writes, its events (aggregated like the kubelet's correlator, spam-filtered like
client-go's), the image back-off (10 s doubling to 300 s per ``<podUID>_<image>``), and
pods being finished off when deleted.

``time_scale`` multiplies every kubelet delay (back-off, pod-worker requeue, event token
refill); node heartbeats stay real-time. Tests, demo and benchmarks run this same code.

One asyncio loop: one pod watch, a fixed pool of pod workers (one sync at a time per pod,
like the kubelet's pod workers), pulls de-duplicated per image+credential.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import random
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from sandbox.creds import Keyring, PullSecret, SecretUnreadable
from sandbox.imageref import InvalidReference, Reference
from sandbox.imageref import parse as parse_reference
from sandbox.pull import Puller, PullError, PullResult, Target

log = logging.getLogger("sandbox.emulator")

# httpcore runs ``import sniffio`` inside a function, at every lock it takes; anyio 4.x no
# longer installs sniffio, and an import that fails searches sys.path again every time (a
# tenth of the emulator's CPU in the storm benchmark). A None entry fails it at once.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

IMAGE_BACKOFF_INITIAL = 10.0  # imageBackOffPeriod
IMAGE_BACKOFF_MAX = 300.0  # MaxImageBackOff
WORKER_BACKOFF = 10.0  # pod worker requeue after a failed sync, jittered by up to 50 %
# The real kubelet's PLEG relists every second and sees the pod's new sandbox, so a pod
# whose first sync failed is synced again 1-2 s later (and shows ImagePullBackOff then).
PLEG_RELIST = 1.0
LEASE_DURATION = 40
LEASE_RENEW = 10.0
NODE_STATUS_REPORT = 60.0
SPAM_BURST = 25
SPAM_REFILL = 300.0  # one event token per 5 minutes per object
EVENT_CACHE = 4096
SECRET_TTL = 2.0
KUBELET_VERSION_FALLBACK = "v1.36.3"
CONTAINERD_VERSION = "containerd://2.1.4"
POD_CIDR = "10.244.0.0/16"
HOST_IP = "127.0.0.1"
KIND_FIELD = {"init": "initContainers", "app": "containers", "ephemeral": "ephemeralContainers"}
# The Normal Events of a pod's ordinary life (scheduled, pulled, started, stopped). The
# kubelet posts them; ``routine_events=False`` leaves them out (the storm benchmark: they
# are most of the node's API writes and nothing reads them). Warnings and BackOff stay.
ROUTINE_REASONS = frozenset({"Scheduled", "Pulling", "Pulled", "Created", "Started", "Killing"})


# --------------------------------------------------------------------------------------
# Small pure helpers (unit-tested)
# --------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def go_quote(s: str) -> str:
    """Go's ``%q`` for ordinary strings."""
    return json.dumps(s, ensure_ascii=False)


def go_duration(seconds: float) -> str:
    """``time.Duration.String()`` of a duration truncated to milliseconds."""
    ms = int(max(seconds, 0.0) * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, frac = divmod(rem, 1000)
    sec = str(s) + (f".{frac:03d}".rstrip("0") if frac else "")
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def aggregate_errors(messages: Sequence[str]) -> str:
    """``utilerrors.NewAggregate(errs).Error()``: de-duplicated, bracketed when several."""
    seen: list[str] = []
    for m in messages:
        if m not in seen:
            seen.append(m)
    if not seen:
        return ""
    if len(seen) == 1:
        return seen[0]
    return "[" + ", ".join(seen) + "]"


def default_pull_policy(tag: str | None) -> str:
    """The API server's default (``SetDefaults_Container``): Always for ``:latest``.

    ``tag`` is the tag after the kubelet's parsing, i.e. ``latest`` when the image names
    neither tag nor digest, None for a digest-only reference.
    """
    return "Always" if tag == "latest" else "IfNotPresent"


class Backoff:
    """``flowcontrol.Backoff`` without jitter (the kubelet's image back-off)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.entries: dict[str, tuple[float, float]] = {}  # key -> (backoff, lastUpdate)

    def _expired(self, now: float, last: float) -> bool:
        return now - last > self.maximum * 2

    def next(self, key: str, now: float) -> float:
        entry = self.entries.get(key)
        if entry is None or self._expired(now, entry[1]):
            delay = self.initial
        else:
            delay = min(entry[0] * 2, self.maximum)
        self.entries[key] = (delay, now)
        return delay

    def in_backoff_since_update(self, key: str, now: float) -> bool:
        entry = self.entries.get(key)
        if entry is None or self._expired(now, entry[1]):
            return False
        return now - entry[1] < entry[0]

    def remaining(self, key: str, now: float) -> float:
        entry = self.entries.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry[0] - (now - entry[1]))

    def gc(self, now: float) -> None:
        for key in [k for k, (_, last) in self.entries.items() if self._expired(now, last)]:
            del self.entries[key]

    def forget_prefix(self, prefix: str) -> None:
        for key in [k for k in self.entries if k.startswith(prefix)]:
            del self.entries[key]


class SpamFilter:
    """client-go's EventSourceObjectSpamFilter: token bucket per source+object."""

    def __init__(self, burst: int, refill_seconds: float, size: int = EVENT_CACHE) -> None:
        self.burst = burst
        self.refill = max(refill_seconds, 1e-6)
        self.size = size
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) / self.refill)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self.buckets[key] = (tokens, now)
        while len(self.buckets) > self.size:
            self.buckets.popitem(last=False)
        return ok


def container_ref(pod: Mapping[str, Any], kind: str | None, name: str | None) -> dict[str, Any]:
    """``kubecontainer.GenerateContainerRef`` (fieldPath ``spec.containers{name}`` etc.)."""
    meta = pod.get("metadata") or {}
    ref: dict[str, Any] = {
        "kind": "Pod",
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "apiVersion": "v1",
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    if kind is not None and name is not None:
        ref["fieldPath"] = f"spec.{KIND_FIELD[kind]}{{{name}}}"
    return ref


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------


@dataclass
class CachedImage:
    full: str
    repo_digest: str
    image_id: str
    size: int
    node_accessible: bool = False
    cred_hashes: set[str] = field(default_factory=set)


@dataclass
class Ctr:
    """A "container" the node runs (or ran, for init containers)."""

    image: str  # spec image it was started from
    image_name: str  # what the runtime reports, e.g. docker.io/library/nginx:1.27
    image_id: str  # repo digest
    container_id: str
    started_at: str
    finished_at: str | None = None  # init containers: completed
    restart_count: int = 0
    last_state: dict[str, Any] = field(default_factory=dict)


@dataclass
class PodRecord:
    uid: str
    pod: dict[str, Any]
    fingerprint: str = ""
    ctrs: dict[tuple[str, str], Ctr] = field(default_factory=dict)
    waiting: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # what the status shows: the waiting reasons as the previous sync left them
    shown: dict[tuple[str, str], tuple[str, str]] | None = None
    restarts: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    start_time: str | None = None
    pod_ip: str | None = None
    last_status: str = ""
    timer: asyncio.TimerHandle | None = None
    deleting: bool = False
    gone: bool = False
    adopted: bool = False
    relisted: bool = False

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"].get("namespace", ""))

    @property
    def name(self) -> str:
        return str(self.pod["metadata"].get("name", ""))


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status


class _Gone(Exception):
    pass


# --------------------------------------------------------------------------------------
# A small async Kubernetes client (httpx), configured from a kubeconfig
# --------------------------------------------------------------------------------------


class KubeApi:
    def __init__(self, kubeconfig: Path, concurrency: int = 32) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=cfg
        )
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        headers = {
            "User-Agent": "kubelet/v1.36 (linux) sandbox-emulator",
            "Accept": "application/json",
        }
        token = (cfg.api_key or {}).get("authorization")
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        self.http = httpx.AsyncClient(
            base_url=cfg.host,
            verify=ctx,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=10.0),
            # every connection the pool may open is kept: one closed as surplus is one
            # more TLS handshake when the next burst comes
            limits=httpx.Limits(
                max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8
            ),
        )
        self.sem = asyncio.Semaphore(concurrency)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        ok: Sequence[int] = (200, 201),
    ) -> dict[str, Any]:
        async with self.sem:
            resp = await self.http.request(
                method,
                path,
                params=params,
                content=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": content_type} if body is not None else None,
            )
        if resp.status_code not in ok:
            raise ApiError(resp.status_code, resp.text)
        if not resp.content:
            return {}
        data = resp.json()
        return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------
# Events (record.EventRecorder + EventCorrelator, simplified)
# --------------------------------------------------------------------------------------


class EventRecorder:
    def __init__(self, api: KubeApi, node: str, time_scale: float, *, routine: bool = True) -> None:
        self.api = api
        self.node = node
        self.routine = routine
        self.spam = SpamFilter(SPAM_BURST, SPAM_REFILL * time_scale)
        self.seen: OrderedDict[str, tuple[str, str, int]] = OrderedDict()  # key -> ns,name,count
        self._seq = 0
        self.created = 0
        self.patched = 0
        self.dropped = 0
        self.skipped = 0  # routine Events left out (routine=False)

    async def emit(
        self,
        ref: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str = "kubelet",
    ) -> None:
        if not self.routine and type_ == "Normal" and reason in ROUTINE_REASONS:
            self.skipped += 1
            return
        host = self.node if component == "kubelet" else ""
        spam_key = "".join(
            [
                component,
                host,
                ref.get("kind", ""),
                ref.get("namespace", ""),
                ref.get("name", ""),
                ref.get("uid", ""),
                ref.get("apiVersion", ""),
            ]
        )
        if not self.spam.allow(spam_key, time.monotonic()):
            self.dropped += 1
            return
        key = "\x00".join(
            [
                component,
                host,
                ref.get("kind", ""),
                ref.get("namespace", ""),
                ref.get("name", ""),
                ref.get("fieldPath", ""),
                ref.get("uid", ""),
                ref.get("apiVersion", ""),
                type_,
                reason,
                message,
            ]
        )
        ns = str(ref.get("namespace") or "default")
        ts = now_rfc3339()
        prev = self.seen.pop(key, None)
        try:
            if prev is not None:
                pns, pname, count = prev
                patch = {"count": count + 1, "lastTimestamp": ts, "message": message}
                try:
                    await self.api.call(
                        "PATCH",
                        f"/api/v1/namespaces/{pns}/events/{pname}",
                        patch,
                        content_type="application/strategic-merge-patch+json",
                    )
                    self.seen[key] = (pns, pname, count + 1)
                    self.patched += 1
                    return
                except ApiError as e:
                    if e.status != 404:
                        raise
                    first_count = count + 1
            else:
                first_count = 1
            self._seq += 1
            name = f"{ref.get('name', 'object')}.{time.time_ns() + self._seq:x}"
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": dict(ref),
                "reason": reason,
                "message": message,
                "source": {"component": component, **({"host": host} if host else {})},
                "firstTimestamp": ts,
                "lastTimestamp": ts,
                "count": first_count,
                "type": type_,
                "eventTime": None,
                "reportingComponent": component,
                "reportingInstance": host or f"{component}-{self.node}",
            }
            await self.api.call("POST", f"/api/v1/namespaces/{ns}/events", body)
            self.created += 1
            self.seen[key] = (ns, name, first_count)
            while len(self.seen) > EVENT_CACHE:
                self.seen.popitem(last=False)
        except (ApiError, httpx.HTTPError) as e:
            log.debug("event %s/%s not recorded: %s", reason, ref.get("name"), e)


# --------------------------------------------------------------------------------------
# Image service (containerd's side: cache + de-duplicated pulls)
# --------------------------------------------------------------------------------------


class PullFailed(Exception):
    pass


def cred_hash(cred: tuple[str, str]) -> str:
    return hashlib.sha256(f"{cred[0]}\x00{cred[1]}".encode()).hexdigest()


class ImageService:
    def __init__(self, puller: Puller, concurrency: int) -> None:
        self.puller = puller
        self.images: dict[str, CachedImage] = {}
        self.inflight: dict[tuple[str, str], asyncio.Future[PullResult]] = {}
        self.sem = asyncio.Semaphore(concurrency)
        self.pulls = 0
        self.version = 0  # bumps when the image list changes

    def get(self, full: str) -> CachedImage | None:
        return self.images.get(full)

    async def _pull_one(self, target: Target, cred: tuple[str, str] | None) -> PullResult:
        key = (target.full, cred_hash(cred) if cred else "")
        fut = self.inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self.inflight[key] = fut
        try:
            async with self.sem:
                self.pulls += 1
                result = await self.puller.pull(target, cred)
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self.inflight.pop(key, None)

    async def pull(
        self, target: Target, creds: Sequence[tuple[str, str]]
    ) -> tuple[CachedImage, PullResult]:
        """kuberuntime ``PullImage``: each credential in turn, first success wins."""
        errors: list[str] = []
        attempts: list[tuple[str, str] | None] = [*creds] if creds else [None]
        for cred in attempts:
            try:
                result = await self._pull_one(target, cred)
            except PullError as e:
                errors.append(str(e))
                continue
            return self._store(target, result, cred), result
        raise PullFailed(aggregate_errors(errors))

    def _store(
        self, target: Target, result: PullResult, cred: tuple[str, str] | None
    ) -> CachedImage:
        img = self.images.get(target.full)
        if img is None or img.repo_digest != result.repo_digest:
            img = CachedImage(target.full, result.repo_digest, result.image_id, result.size)
            self.version += 1
        if cred is None:
            img.node_accessible = True
        else:
            img.cred_hashes.add(cred_hash(cred))
        self.images[target.full] = img
        self.images.setdefault(result.repo_digest, img)
        return img

    def node_images(self, limit: int = 50) -> list[dict[str, Any]]:
        seen: dict[str, CachedImage] = {}
        for img in self.images.values():
            seen.setdefault(img.image_id, img)
        out = []
        for img in sorted(seen.values(), key=lambda i: -i.size)[:limit]:
            names = sorted({img.repo_digest, *(k for k, v in self.images.items() if v is img)})
            out.append({"names": names, "sizeBytes": img.size})
        return out


# --------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------


@dataclass
class _PullCtx:
    secrets: list[PullSecret] | None = None
    keyring: Keyring | None = None
    error: str | None = None
    loaded: bool = False


class NodeEmulator:
    """A node whose "kubelet" really pulls images and writes kubelet-exact pod status.

    ``time_scale`` scales kubelet timing (1.0 real; 0.02 makes the 10 s back-off 0.2 s).
    ``plain_http`` pulls loopback registries over http://; ``external`` allows
    non-loopback registries (default off: the node is air-gapped, those pulls fail with a
    DNS error); ``mirrors`` maps a registry domain to mirror URLs tried first.
    ``routine_events=False`` posts no Normal Event of a pod's ordinary life (Scheduled,
    Pulling, Pulled, Created, Started, Killing); pull failures' Events are posted as ever.
    ``keep_content=True`` keeps fetched manifests and blobs by digest, like containerd's
    content store: pulling a present image again (``Always``) only resolves its reference.
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        node_name: str = "sandbox-node",
        platform: str = "linux/amd64",
        time_scale: float = 1.0,
        plain_http: bool = True,
        *,
        external: bool = False,
        mirrors: Mapping[str, Sequence[str]] | None = None,
        workers: int = 64,
        pull_concurrency: int = 32,
        api_concurrency: int = 32,
        bind: bool = True,
        routine_events: bool = True,
        keep_content: bool = False,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.node = node_name
        self.platform = platform
        self.time_scale = float(time_scale)
        self.plain_http = plain_http
        self.external = external
        self.mirrors = {k: list(v) for k, v in (mirrors or {}).items()}
        self.n_workers = workers
        self.pull_concurrency = pull_concurrency
        self.api_concurrency = api_concurrency
        self.bind = bind
        self.routine_events = routine_events
        self.keep_content = keep_content
        os_, _, rest = platform.partition("/")
        self.os = os_ or "linux"
        self.arch = rest.split("/")[0] or "amd64"
        self.pods: dict[str, PodRecord] = {}
        self.backoff = Backoff(
            IMAGE_BACKOFF_INITIAL * self.time_scale, IMAGE_BACKOFF_MAX * self.time_scale
        )
        self.prev_err: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._ready = threading.Event()
        self._queue: asyncio.Queue[str] | None = None
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._binding: set[str] = set()
        self._unschedulable: set[str] = set()
        self._ip_free: list[int] = []
        self._ip_next = 2
        self._ip_by_uid: dict[str, int] = {}
        self._secret_cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._node_uid = ""
        self._node_labels: dict[str, str] = {}
        self._images_reported = -1
        self._node_status_at = 0.0
        self.syncs = 0
        self.api: KubeApi
        self.events: EventRecorder
        self.images: ImageService

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop` (blocking)."""
        asyncio.run(self.arun())

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe from any thread or a signal handler."""
        self._stop_requested.set()
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once the Node is registered and the pod watch is running."""
        return self._ready.wait(timeout)

    async def arun(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested.is_set():
            return
        self._queue = asyncio.Queue()
        self.api = KubeApi(self.kubeconfig, self.api_concurrency)
        self.events = EventRecorder(
            self.api, self.node, self.time_scale, routine=self.routine_events
        )
        puller = Puller(
            self.platform,
            plain_http=self.plain_http,
            external=self.external,
            mirrors=self.mirrors,
            keep_content=self.keep_content,
        )
        self.images = ImageService(puller, self.pull_concurrency)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._register_node()
            tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
            tasks.append(asyncio.create_task(self._pod_loop(), name="pods"))
            for i in range(self.n_workers):
                tasks.append(asyncio.create_task(self._worker(), name=f"worker-{i}"))
            log.info("node %s (%s) up, time_scale=%s", self.node, self.platform, self.time_scale)
            await self._stop_event.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for rec in self.pods.values():
                if rec.timer is not None:
                    rec.timer.cancel()
            await puller.aclose()
            await self.api.aclose()
            self._ready.clear()
            log.info("node %s stopped", self.node)

    # -- node, lease -------------------------------------------------------------------

    def _kubelet_version(self) -> str:
        try:
            from sandbox.paths import versions

            return versions().get("KUBERNETES_VERSION", KUBELET_VERSION_FALLBACK)
        except Exception:
            return KUBELET_VERSION_FALLBACK

    def _node_status(self) -> dict[str, Any]:
        ts = now_rfc3339()
        cap = {
            "cpu": "64",
            "memory": "256Gi",
            "pods": "11000",
            "ephemeral-storage": "1Ti",
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        }

        def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": ts,
                "lastTransitionTime": self._started_at,
            }

        machine = hashlib.md5(self.node.encode()).hexdigest()
        return {
            "capacity": cap,
            "allocatable": cap,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": machine,
                "systemUUID": str(uuid.UUID(machine)),
                "bootID": self._boot_id,
                "kernelVersion": "6.8.0-sandbox",
                "osImage": "pullmedic sandbox node (emulated)",
                "containerRuntimeVersion": CONTAINERD_VERSION,
                "kubeletVersion": self._kubelet_version(),
                "kubeProxyVersion": "",
                "operatingSystem": self.os,
                "architecture": self.arch,
            },
            "images": self.images.node_images(),
        }

    async def _register_node(self) -> None:
        self._started_at = now_rfc3339()
        self._boot_id = str(uuid.uuid4())
        self._node_labels = {
            "kubernetes.io/os": self.os,
            "kubernetes.io/arch": self.arch,
            "kubernetes.io/hostname": self.node,
            "beta.kubernetes.io/os": self.os,
            "beta.kubernetes.io/arch": self.arch,
            "node.kubernetes.io/instance-type": "sandbox",
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": self._node_labels,
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
            },
            "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
        }
        while True:
            try:
                try:
                    node = await self.api.call("POST", "/api/v1/nodes", body)
                except ApiError as e:
                    if e.status != 409:
                        raise
                    node = await self.api.call(
                        "PATCH",
                        f"/api/v1/nodes/{self.node}",
                        {"metadata": {"labels": self._node_labels}},
                        content_type="application/merge-patch+json",
                    )
                self._node_uid = str(node.get("metadata", {}).get("uid", ""))
                await self._report_node_status(force=True)
                await self._renew_lease()
                return
            except (ApiError, httpx.HTTPError) as e:
                log.warning("node registration failed (%s); retrying", e)
                await asyncio.sleep(1.0)

    async def _report_node_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if (
            not force
            and self._images_reported == self.images.version
            and (now - self._node_status_at < NODE_STATUS_REPORT)
        ):
            return
        version = self.images.version
        try:
            await self.api.call(
                "PATCH",
                f"/api/v1/nodes/{self.node}/status",
                {"status": self._node_status()},
                content_type="application/merge-patch+json",
            )
        except ApiError as e:
            if e.status == 404:
                await self._register_node()
                return
            raise
        self._images_reported = version
        self._node_status_at = now

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": LEASE_DURATION,
            "renewTime": now_micro(),
        }
        try:
            await self.api.call(
                "PATCH", path, {"spec": spec}, content_type="application/merge-patch+json"
            )
            return
        except ApiError as e:
            if e.status != 404:
                raise
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self._node_uid}
                ],
            },
            "spec": spec,
        }
        try:
            await self.api.call(
                "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease
            )
        except ApiError as e:
            if e.status == 404:  # namespace missing (it is normally made by the apiserver)
                with contextlib.suppress(ApiError):
                    await self.api.call(
                        "POST",
                        "/api/v1/namespaces",
                        {
                            "apiVersion": "v1",
                            "kind": "Namespace",
                            "metadata": {"name": "kube-node-lease"},
                        },
                    )
            elif e.status != 409:
                raise

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW)
            try:
                await self._renew_lease()
                await self._report_node_status()
            except (ApiError, httpx.HTTPError) as e:
                log.warning("heartbeat failed: %s", e)

    # -- watch -------------------------------------------------------------------------

    async def _pod_loop(self) -> None:
        while True:
            try:
                rv = await self._list_pods()
                self._ready.set()
                await self._watch_pods(rv)
            except _Gone:
                log.info("pod watch expired; relisting")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("pod watch failed (%s); relisting", e)
                await asyncio.sleep(1.0)

    async def _list_pods(self) -> str:
        seen: set[str] = set()
        cont = ""
        rv = ""
        while True:
            params = {"limit": "500"}
            if cont:
                params["continue"] = cont
            doc = await self.api.call("GET", "/api/v1/pods", params=params)
            for pod in doc.get("items") or []:
                pod.setdefault("apiVersion", "v1")
                pod.setdefault("kind", "Pod")
                seen.add(str(pod["metadata"]["uid"]))
                self._on_pod(pod)
            meta = doc.get("metadata") or {}
            rv = str(meta.get("resourceVersion", rv))
            cont = str(meta.get("continue") or "")
            if not cont:
                break
        for uid in [u for u in self.pods if u not in seen]:
            self._forget(uid)
        return rv

    async def _watch_pods(self, rv: str) -> None:
        params = {
            "watch": "true",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        timeout = httpx.Timeout(30.0, read=None)
        async with self.api.http.stream(
            "GET", "/api/v1/pods", params=params, timeout=timeout
        ) as resp:
            if resp.status_code == 410:
                raise _Gone()
            if resp.status_code != 200:
                raise ApiError(resp.status_code, (await resp.aread()).decode(errors="replace"))
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                typ = ev.get("type")
                obj = ev.get("object") or {}
                if typ == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
                if typ == "BOOKMARK":
                    continue
                if typ == "DELETED":
                    self._forget(str(obj.get("metadata", {}).get("uid", "")))
                elif typ in ("ADDED", "MODIFIED"):
                    self._on_pod(obj)

    # -- pod bookkeeping ---------------------------------------------------------------

    @staticmethod
    def _fingerprint(pod: Mapping[str, Any]) -> str:
        meta = pod.get("metadata") or {}
        relevant = [
            pod.get("spec"),
            meta.get("labels"),
            meta.get("annotations"),
            meta.get("deletionTimestamp"),
            meta.get("deletionGracePeriodSeconds"),
        ]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()

    def _on_pod(self, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        meta.pop("managedFields", None)
        uid = str(meta.get("uid", ""))
        spec = pod.get("spec") or {}
        node_name = spec.get("nodeName") or ""
        if not node_name:
            self._maybe_schedule(pod)
            return
        if node_name != self.node:
            if uid in self.pods:
                self._forget(uid)
            return
        self._binding.discard(uid)
        self._unschedulable.discard(uid)
        rec = self.pods.get(uid)
        fp = self._fingerprint(pod)
        if rec is None:
            rec = PodRecord(uid=uid, pod=pod)
            self.pods[uid] = rec
            rec.fingerprint = fp
            self._enqueue(uid)
            return
        rec.pod = pod
        if fp != rec.fingerprint:
            rec.fingerprint = fp
            self._enqueue(uid)

    def _forget(self, uid: str) -> None:
        self._binding.discard(uid)
        self._unschedulable.discard(uid)
        rec = self.pods.pop(uid, None)
        if rec is None:
            return
        rec.gone = True
        if rec.timer is not None:
            rec.timer.cancel()
        self.backoff.forget_prefix(uid + "_")
        for key in [k for k in self.prev_err if k.startswith(uid + "_")]:
            del self.prev_err[key]
        n = self._ip_by_uid.pop(uid, None)
        if n is not None:
            self._ip_free.append(n)

    def _enqueue(self, uid: str) -> None:
        if uid in self._active:
            self._dirty.add(uid)
            return
        if uid in self._queued or self._queue is None:
            return
        self._queued.add(uid)
        self._queue.put_nowait(uid)

    def _requeue_after(self, rec: PodRecord, delay: float) -> None:
        if rec.timer is not None:
            rec.timer.cancel()
        assert self._loop is not None
        rec.timer = self._loop.call_later(max(delay, 0.0), self._enqueue, rec.uid)

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            uid = await self._queue.get()
            self._queued.discard(uid)
            rec = self.pods.get(uid)
            if rec is None:
                continue
            self._active.add(uid)
            try:
                self.syncs += 1
                await self._sync(rec)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync of pod %s/%s failed", rec.namespace, rec.name)
                if not rec.gone:
                    self._requeue_after(rec, self._worker_backoff())
            finally:
                self._active.discard(uid)
                if uid in self._dirty:
                    self._dirty.discard(uid)
                    self._enqueue(uid)

    def _worker_backoff(self) -> float:
        return WORKER_BACKOFF * (1.0 + 0.5 * random.random()) * self.time_scale

    def _alloc_ip(self, uid: str) -> str:
        n = self._ip_by_uid.get(uid)
        if n is None:
            if self._ip_free:
                n = self._ip_free.pop()
            else:
                n = self._ip_next
                self._ip_next += 1
                while self._ip_next % 256 in (0, 255):
                    self._ip_next += 1
            self._ip_by_uid[uid] = n
        return f"10.244.{n // 256}.{n % 256}"

    # -- scheduling --------------------------------------------------------------------

    def _maybe_schedule(self, pod: dict[str, Any]) -> None:
        if not self.bind:
            return
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        uid = str(meta.get("uid", ""))
        if meta.get("deletionTimestamp") or spec.get("schedulingGates"):
            return
        if (spec.get("schedulerName") or "default-scheduler") != "default-scheduler":
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        if uid in self._binding or uid in self._unschedulable or self._loop is None:
            return
        selector = spec.get("nodeSelector") or {}
        fits = all(self._node_labels.get(k) == v for k, v in selector.items())
        if fits:
            self._binding.add(uid)
            self._loop.create_task(self._bind(pod))
        else:
            self._unschedulable.add(uid)
            self._loop.create_task(self._mark_unschedulable(pod))

    async def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        try:
            await self.api.call("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", body)
        except (ApiError, httpx.HTTPError) as e:
            log.debug("binding %s/%s failed: %s", ns, name, e)
            self._binding.discard(uid)
            return
        await self.events.emit(
            container_ref(pod, None, None),
            "Normal",
            "Scheduled",
            f"Successfully assigned {ns}/{name} to {self.node}",
            component="default-scheduler",
        )

    async def _mark_unschedulable(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        msg = (
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
            "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        )
        cond = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": msg,
            "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(),
        }
        with contextlib.suppress(ApiError, httpx.HTTPError):
            await self.api.call(
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                {"status": {"conditions": [cond]}},
                content_type="application/strategic-merge-patch+json",
            )
        await self.events.emit(
            container_ref(pod, None, None),
            "Warning",
            "FailedScheduling",
            msg,
            component="default-scheduler",
        )

    # -- secrets -----------------------------------------------------------------------

    async def _get_secret(self, ns: str, name: str) -> dict[str, Any] | None:
        key = (ns, name)
        now = time.monotonic()
        hit = self._secret_cache.get(key)
        if hit is not None and now - hit[0] < SECRET_TTL:
            return hit[1]
        try:
            sec: dict[str, Any] | None = await self.api.call(
                "GET", f"/api/v1/namespaces/{ns}/secrets/{name}"
            )
        except ApiError as e:
            if e.status not in (403, 404):
                raise
            sec = None
        self._secret_cache[key] = (now, sec)
        if len(self._secret_cache) > 10000:
            self._secret_cache.clear()
        return sec

    async def _pull_secrets(self, rec: PodRecord) -> _PullCtx:
        """``getPullSecretsForPod``: read each listed secret, warn about missing ones."""
        pod = rec.pod
        ns = rec.namespace
        found: list[PullSecret] = []
        missing: list[str] = []
        for ref in (pod.get("spec") or {}).get("imagePullSecrets") or []:
            name = (ref or {}).get("name") or ""
            if not name:
                continue
            sec = await self._get_secret(ns, name)
            if sec is None:
                missing.append(name)
                continue
            found.append(
                PullSecret(ns, name, str(sec.get("type") or ""), dict(sec.get("data") or {}))
            )
        if missing:
            await self.events.emit(
                container_ref(pod, None, None),
                "Warning",
                "FailedToRetrieveImagePullSecret",
                f"Unable to retrieve some image pull secrets ({', '.join(missing)}); "
                "attempting to pull the image may not succeed.",
            )
        return _PullCtx(secrets=found)

    @staticmethod
    def _keyring(ctx: _PullCtx) -> str | None:
        """Build the pod's keyring once; returns the kubelet's error text if it fails."""
        if not ctx.loaded:
            try:
                ctx.keyring = Keyring.from_secrets(ctx.secrets or [])
            except SecretUnreadable as e:
                ctx.error = str(e)
            ctx.loaded = True
        return ctx.error

    # -- the sync ----------------------------------------------------------------------

    async def _sync(self, rec: PodRecord) -> None:
        pod = rec.pod
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        if rec.gone:
            return
        if meta.get("deletionTimestamp"):
            await self._finish_deletion(rec)
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        if not rec.adopted:
            self._adopt(rec)
        if rec.start_time is None:
            rec.start_time = now_rfc3339()
        if rec.pod_ip is None:
            rec.pod_ip = self._alloc_ip(rec.uid)

        # The kubelet writes the status it computed from its previous sync as a sync starts:
        # ContainerCreating / PodInitializing while the first pulls run, and later a waiting
        # reason one sync (1-15 s) after the Events that announced it.
        rec.shown = dict(rec.waiting)
        await self._write_status(rec)
        ctx = await self._pull_secrets(rec)
        retry = False

        init_done = True
        for c in spec.get("initContainers") or []:
            key = ("init", str(c.get("name")))
            have = rec.ctrs.get(key)
            if have is not None:
                continue  # completed (or a running sidecar)
            if not await self._start_container(rec, c, "init", ctx):
                init_done = False
                retry = True
                break
        if init_done:
            for c in spec.get("containers") or []:
                key = ("app", str(c.get("name")))
                have = rec.ctrs.get(key)
                if have is not None and have.image == c.get("image"):
                    continue
                if have is not None:
                    await self.events.emit(
                        container_ref(pod, "app", key[1]),
                        "Normal",
                        "Killing",
                        f"Container {key[1]} definition changed, will be restarted",
                    )
                    last = {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": have.started_at,
                            "finishedAt": now_rfc3339(),
                            "containerID": f"containerd://{have.container_id}",
                        }
                    }
                    rec.restarts[key] = (have.restart_count + 1, last)
                    del rec.ctrs[key]
                if not await self._start_container(rec, c, "app", ctx):
                    retry = True
            for c in spec.get("ephemeralContainers") or []:
                key = ("ephemeral", str(c.get("name")))
                if key in rec.ctrs:
                    continue
                if not await self._start_container(rec, c, "ephemeral", ctx):
                    retry = True
        if rec.gone:
            return
        await self._write_status(rec)
        if retry and not rec.relisted:
            rec.relisted = True
            self._requeue_after(rec, PLEG_RELIST * (1.0 + random.random()) * self.time_scale)
        elif retry:
            self._requeue_after(rec, self._worker_backoff())
        await self._report_node_status()

    def _adopt(self, rec: PodRecord) -> None:
        """After an emulator restart, keep what the pod status says is already running."""
        rec.adopted = True
        status = rec.pod.get("status") or {}
        if status.get("startTime"):
            rec.start_time = str(status["startTime"])
        ip = status.get("podIP")
        if ip and str(ip).startswith("10.244."):
            a, b = str(ip).split(".")[2:4]
            n = int(a) * 256 + int(b)
            if n not in self._ip_by_uid.values():
                self._ip_by_uid[rec.uid] = n
                self._ip_next = max(self._ip_next, n + 1)
                rec.pod_ip = str(ip)
        spec = rec.pod.get("spec") or {}
        for kind, sfield, cfield in (
            ("init", "initContainerStatuses", "initContainers"),
            ("app", "containerStatuses", "containers"),
            ("ephemeral", "ephemeralContainerStatuses", "ephemeralContainers"),
        ):
            images = {c.get("name"): c.get("image") for c in spec.get(cfield) or []}
            for cs in status.get(sfield) or []:
                state = cs.get("state") or {}
                name = cs.get("name")
                if name not in images or not cs.get("imageID"):
                    continue
                term = state.get("terminated") or {}
                if state.get("running") or (kind == "init" and term.get("exitCode") == 0):
                    cid = str(cs.get("containerID", "")).removeprefix("containerd://")
                    rec.ctrs[(kind, str(name))] = Ctr(
                        image=str(images[name]),
                        image_name=str(cs.get("image", "")),
                        image_id=str(cs.get("imageID", "")),
                        container_id=cid or _cid(),
                        started_at=str((state.get("running") or term).get("startedAt") or ""),
                        finished_at=term.get("finishedAt") if term else None,
                        restart_count=int(cs.get("restartCount") or 0),
                        last_state=dict(cs.get("lastState") or {}),
                    )

    async def _start_container(
        self, rec: PodRecord, c: Mapping[str, Any], kind: str, ctx: _PullCtx
    ) -> bool:
        name = str(c.get("name"))
        key = (kind, name)
        ref = container_ref(rec.pod, kind, name)
        ok, reason, msg, img = await self._ensure_image(rec, c, kind, ctx)
        if rec.gone:
            return False
        if not ok or img is None:
            rec.waiting[key] = (reason, msg)
            await self.events.emit(ref, "Warning", "Failed", f"Error: {reason}")
            return False
        rec.waiting.pop(key, None)
        restart_count, last = rec.restarts.pop(key, (0, {}))
        cid = _cid()
        await self.events.emit(ref, "Normal", "Created", "Container created")
        await self.events.emit(ref, "Normal", "Started", "Container started")
        started = now_rfc3339()
        ctr = Ctr(
            image=str(c.get("image")),
            image_name=img.full,
            image_id=img.repo_digest,
            container_id=cid,
            started_at=started,
            restart_count=restart_count,
            last_state=last,
        )
        if kind == "init" and c.get("restartPolicy") != "Always":
            ctr.finished_at = now_rfc3339()
        rec.ctrs[key] = ctr
        return True

    async def _ensure_image(
        self, rec: PodRecord, c: Mapping[str, Any], kind: str, ctx: _PullCtx
    ) -> tuple[bool, str, str, CachedImage | None]:
        """``imageManager.EnsureImageExists`` -> (ok, waiting reason, message, image)."""
        pod = rec.pod
        image = str(c.get("image") or "")
        ref = container_ref(pod, kind, str(c.get("name")))
        try:
            parsed = _parse_image(image)
        except InvalidReference as e:
            msg = f"Failed to apply default image tag {go_quote(image)}: {e}"
            await self.events.emit(ref, "Warning", "InspectFailed", msg)
            return False, "InvalidImageName", msg, None
        if parsed.digest:
            full = f"{parsed.name}@{parsed.digest}"
        else:
            full = f"{parsed.name}:{parsed.tag or 'latest'}"
        target = Target(full=full, domain=parsed.domain, path=parsed.path, obj=parsed.manifest_ref)
        policy = str(c.get("imagePullPolicy") or default_pull_policy(parsed.tag))

        cached = self.images.get(full)
        if cached is not None and policy != "Always":
            err = self._keyring(ctx)
            if err is not None:
                return False, err, err, None
            creds = self._creds_for(ctx, parsed)
            if cached.node_accessible or any(cred_hash(x) in cached.cred_hashes for x in creds):
                await self.events.emit(
                    ref,
                    "Normal",
                    "Pulled",
                    f"Container image {go_quote(image)} already present on machine and can be "
                    "accessed by the pod",
                )
                return True, "", "", cached
        if policy == "Never":
            msg = f"Container image {go_quote(image)} is not present with pull policy of Never"
            await self.events.emit(ref, "Warning", "ErrImageNeverPull", msg)
            return False, "ErrImageNeverPull", msg, None

        err = self._keyring(ctx)
        if err is not None:
            return False, err, err, None
        creds = self._creds_for(ctx, parsed)

        key = f"{rec.uid}_{image}"
        now = time.monotonic()
        if self.backoff.in_backoff_since_update(key, now):
            msg = f"Back-off pulling image {go_quote(image)}"
            await self.events.emit(ref, "Normal", "BackOff", msg)
            prev = self.prev_err.get(key)
            if prev is not None:
                msg = f"{msg}: {prev}"
            return False, "ImagePullBackOff", msg, None
        self.prev_err.pop(key, None)
        await self.events.emit(ref, "Normal", "Pulling", f"Pulling image {go_quote(image)}")
        t0 = time.monotonic()
        try:
            img, result = await self.images.pull(target, creds)
        except PullFailed as e:
            text = str(e)
            await self.events.emit(
                ref, "Warning", "Failed", f"Failed to pull image {go_quote(image)}: {text}"
            )
            if rec.uid in self.pods:
                self.backoff.next(key, time.monotonic())
                self.prev_err[key] = f"ErrImagePull: {text}"
            return False, "ErrImagePull", text, None
        total = time.monotonic() - t0
        await self.events.emit(
            ref,
            "Normal",
            "Pulled",
            f"Successfully pulled image {go_quote(image)} in {go_duration(result.pull_seconds)} "
            f"({go_duration(total)} including waiting). Image size: {result.size} bytes.",
        )
        self.backoff.gc(time.monotonic())
        return True, "", "", img

    @staticmethod
    def _creds_for(ctx: _PullCtx, parsed: Any) -> list[tuple[str, str]]:
        if ctx.keyring is None:
            return []
        return [(c.username, c.password) for c in ctx.keyring.lookup(parsed)]

    async def _finish_deletion(self, rec: PodRecord) -> None:
        """No container to stop: finish the deletion at once, as the kubelet would after."""
        if rec.deleting:
            return
        rec.deleting = True
        for (kind, name), ctr in list(rec.ctrs.items()):
            if ctr.finished_at is None:
                await self.events.emit(
                    container_ref(rec.pod, kind, name),
                    "Normal",
                    "Killing",
                    f"Stopping container {name}",
                )
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": rec.uid}}
        try:
            await self.api.call(
                "DELETE",
                f"/api/v1/namespaces/{rec.namespace}/pods/{rec.name}",
                body,
                ok=(200, 202),
            )
        except ApiError as e:
            if e.status not in (404, 409):
                rec.deleting = False
                raise

    # -- status ------------------------------------------------------------------------

    async def _write_status(self, rec: PodRecord) -> None:
        status = build_status(rec, self.node)
        text = json.dumps(status, sort_keys=True)
        if text == rec.last_status:
            return
        body = {"metadata": {"uid": rec.uid}, "status": status}
        try:
            await self.api.call(
                "PATCH",
                f"/api/v1/namespaces/{rec.namespace}/pods/{rec.name}/status",
                body,
                content_type="application/merge-patch+json",
            )
        except ApiError as e:
            if e.status == 404:
                return
            raise
        rec.last_status = text


@functools.lru_cache(maxsize=4096)
def _parse_image(image: str) -> Reference:
    """The kubelet's parse, memoised: thousands of pods share few images."""
    return parse_reference(image)


def _cid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


# --------------------------------------------------------------------------------------
# Pod status generation (kubelet generateAPIPodStatus + status.Generate*Condition)
# --------------------------------------------------------------------------------------


def _container_status(
    rec: PodRecord, kind: str, c: Mapping[str, Any], init_pending: bool
) -> dict[str, Any]:
    name = str(c.get("name"))
    key = (kind, name)
    ctr = rec.ctrs.get(key)
    out: dict[str, Any]
    if ctr is not None:
        if ctr.finished_at is not None:
            state = {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": ctr.started_at,
                    "finishedAt": ctr.finished_at,
                    "containerID": f"containerd://{ctr.container_id}",
                }
            }
            started = False
        else:
            state = {"running": {"startedAt": ctr.started_at}}
            started = True
        out = {
            "name": name,
            "state": state,
            "lastState": ctr.last_state,
            "ready": True,
            "restartCount": ctr.restart_count,
            "image": ctr.image_name,
            "imageID": ctr.image_id,
            "containerID": f"containerd://{ctr.container_id}",
            "started": started,
        }
    else:
        waiting = (rec.waiting if rec.shown is None else rec.shown).get(key)
        if init_pending and kind != "ephemeral":
            waiting = waiting if (kind == "init" and waiting) else ("PodInitializing", "")
        if waiting is None:
            waiting = ("ContainerCreating", "")
        w: dict[str, Any] = {"reason": waiting[0]}
        if waiting[1]:
            w["message"] = waiting[1]
        restart_count, last = rec.restarts.get(key, (0, {}))
        out = {
            "name": name,
            "state": {"waiting": w},
            "lastState": last,
            "ready": False,
            "restartCount": restart_count,
            "image": str(c.get("image") or ""),
            "imageID": "",
            "started": False,
        }
    mounts = [
        {
            "name": m.get("name"),
            "mountPath": m.get("mountPath"),
            **({"readOnly": True, "recursiveReadOnly": "Disabled"} if m.get("readOnly") else {}),
        }
        for m in c.get("volumeMounts") or []
    ]
    if mounts:
        out["volumeMounts"] = mounts
    return out


def build_status(rec: PodRecord, node: str) -> dict[str, Any]:
    pod = rec.pod
    spec = pod.get("spec") or {}
    old = pod.get("status") or {}
    generation = (pod.get("metadata") or {}).get("generation")
    inits = spec.get("initContainers") or []
    init_statuses: list[dict[str, Any]] = []
    pending = False
    for c in inits:
        # A pod with init containers starts every status at PodInitializing (the kubelet's
        # default waiting state), init containers included.
        init_statuses.append(_container_status(rec, "init", c, True))
        if ("init", str(c.get("name"))) not in rec.ctrs:
            pending = True
    app = sorted(
        (_container_status(rec, "app", c, pending) for c in spec.get("containers") or []),
        key=lambda s: str(s["name"]),
    )
    eph = sorted(
        (
            _container_status(rec, "ephemeral", c, False)
            for c in spec.get("ephemeralContainers") or []
        ),
        key=lambda s: str(s["name"]),
    )

    def names(items: list[str]) -> str:
        return "[" + " ".join(items) + "]"

    incomplete = [str(c.get("name")) for c in inits if ("init", str(c.get("name"))) not in rec.ctrs]
    any_app_started = any("running" in s["state"] for s in app)
    unready = [str(s["name"]) for s in app if not s["ready"]]
    for c, s in zip(inits, init_statuses, strict=True):
        if c.get("restartPolicy") == "Always" and not s["ready"]:
            unready.insert(0, str(c.get("name")))
    waiting_app = any("waiting" in s["state"] for s in app)
    phase = "Pending" if (pending or waiting_app or not app) else "Running"

    def cond(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        st = "True" if ok else "False"
        prev = next((x for x in old.get("conditions") or [] if x.get("type") == type_), None)
        since = prev.get("lastTransitionTime") if prev and prev.get("status") == st else None
        out: dict[str, Any] = {
            "type": type_,
            "status": st,
            "lastProbeTime": None,
            "lastTransitionTime": since or now_rfc3339(),
        }
        if generation is not None:
            out["observedGeneration"] = generation
        if reason:
            out["reason"] = reason
        if message:
            out["message"] = message
        return out

    if incomplete and not any_app_started:
        initialized = cond(
            "Initialized",
            False,
            "ContainersNotInitialized",
            f"containers with incomplete status: {names(incomplete)}",
        )
    else:
        initialized = cond("Initialized", True)
    if unready:
        msg = f"containers with unready status: {names(unready)}"
        containers_ready = cond("ContainersReady", False, "ContainersNotReady", msg)
        ready = cond("Ready", False, "ContainersNotReady", msg)
    else:
        containers_ready = cond("ContainersReady", True)
        ready = cond("Ready", True)
    owned = {"PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"}
    conditions = [
        cond("PodReadyToStartContainers", True),
        initialized,
        ready,
        containers_ready,
        cond("PodScheduled", True),
    ] + [x for x in old.get("conditions") or [] if x.get("type") not in owned]

    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": rec.pod_ip,
        "podIPs": [{"ip": rec.pod_ip}] if rec.pod_ip else [],
        "startTime": rec.start_time,
        "containerStatuses": app,
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if inits:
        status["initContainerStatuses"] = init_statuses
    if eph:
        status["ephemeralContainerStatuses"] = eph
    return status


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parse_mirrors(values: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values:
        domain, sep, url = v.partition("=")
        if not sep or not domain or not url:
            raise SystemExit(f"--mirror wants DOMAIN=URL, got {v!r}")
        out.setdefault(domain, []).append(url)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sandbox.emulator", description=__doc__.split("\n")[0]
    )
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node", default="sandbox-node")
    p.add_argument("--platform", default="linux/amd64")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--https", action="store_true", help="use https even for loopback registries")
    p.add_argument("--external", action="store_true", help="allow non-loopback registries")
    p.add_argument("--mirror", action="append", default=[], metavar="DOMAIN=URL")
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--pull-concurrency", type=int, default=32)
    p.add_argument(
        "--api-concurrency",
        type=int,
        default=32,
        help="API requests in flight at once (and about as many pooled connections)",
    )
    p.add_argument(
        "--keep-content",
        action="store_true",
        help="keep fetched manifests and blobs by digest (containerd's content store): a "
        "re-pull of a present image only resolves its reference",
    )
    p.add_argument(
        "--no-routine-events",
        dest="routine_events",
        action="store_false",
        help="post no Scheduled/Pulling/Pulled/Created/Started/Killing Events (pull "
        "failures' Events still posted)",
    )
    p.add_argument("--log-level", default=os.environ.get("PULLMEDIC_EMULATOR_LOG", "INFO"))
    args = p.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    emu = NodeEmulator(
        args.kubeconfig,
        args.node,
        args.platform,
        args.time_scale,
        not args.https,
        external=args.external,
        mirrors=_parse_mirrors(args.mirror),
        workers=args.workers,
        pull_concurrency=args.pull_concurrency,
        api_concurrency=args.api_concurrency,
        routine_events=args.routine_events,
        keep_content=args.keep_content,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: emu.stop())
    emu.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
