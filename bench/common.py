"""Shared pieces of the benchmarks: sandbox, operator process, samplers, trackers, tables.

Everything runs on loopback against the real sandbox (etcd, kube-apiserver,
kube-controller-manager, distribution registries, node emulator at real kubelet timing).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
for _p in (str(REPO), str(REPO / "operator")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from kubernetes import client, config  # noqa: E402

from pullmedic.core.sharding import Shard  # noqa: E402
from sandbox import procs  # noqa: E402
from sandbox.env import Sandbox  # noqa: E402
from sandbox.env import start as start_sandbox  # noqa: E402
from sandbox.kube import create_cluster_policy, install_crds, wait_for  # noqa: E402

_T0 = time.monotonic()
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION")


def say(msg: str) -> None:
    """Progress on stderr (tables go to stdout)."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Machine and numbers
# --------------------------------------------------------------------------------------


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def machine() -> dict[str, Any]:
    """What the figures came from: cores, memory, CPU, kernel, toolchains, components."""
    try:
        go = subprocess.run(
            ["go", "version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        go = "unavailable"
    versions: dict[str, str] = {}
    for line in (REPO / "sandbox" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            versions[k.strip()] = v.strip()
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    try:
        import kopf

        kopf_version = getattr(kopf, "__version__", "?")
    except ImportError:
        kopf_version = "?"
    from importlib.metadata import version

    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else "?",
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go": go,
        "components": versions,
        "kopf": str(kopf_version) if kopf_version != "?" else version("kopf"),
        "kubernetes_client": version("kubernetes"),
        "load_average_at_start": list(os.getloadavg()),
    }


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [f"### {title}", ""]
    for n, r in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


# Writing results and regenerating the docs does not change what is measured.
_NOT_MEASURED_PATHS = (":(exclude)bench/results", ":(exclude)docs", ":(exclude)README.md")


def provenance() -> dict[str, Any]:
    """When and from which code a result came: UTC date, ``git rev-parse HEAD``, and
    ``dirty`` when the work tree differs from it (None: git could not tell)."""
    status = _git("status", "--porcelain", "--", ".", *_NOT_MEASURED_PATHS)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "dirty": None if status is None else bool(status),
    }


def result_path(name: str, quick: bool = False) -> Path:
    """``bench/results/<name>.json`` (committed, the docs' source); a ``--quick`` smoke
    run goes to ``bench/results/quick/`` (ignored by git), so it never replaces them."""
    return (RESULTS / "quick" if quick else RESULTS) / f"{name}.json"


def write_result(name: str, data: dict[str, Any], quick: bool = False) -> Path:
    """Write a result with its provenance (date, commit, dirty, machine) beside the
    figures; values already in ``data`` (taken when the run started) are kept."""
    path = result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "machine" not in data:
        data = {"machine": machine(), **data}
    data = {**provenance(), **data}
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


# --------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------


@dataclass
class Bench:
    sb: Sandbox
    api: client.ApiClient
    core: client.CoreV1Api
    apps: client.AppsV1Api
    custom: client.CustomObjectsApi
    state: Path
    extra: list[Callable[[], None]] = field(default_factory=list)

    def http(self, timeout: float = 30.0) -> httpx.Client:
        """An admin httpx client for raw API calls (cheaper than the typed client)."""
        return httpx.Client(
            base_url=self.sb.cluster.api_url, verify=self.sb.cluster.ssl_context(), timeout=timeout
        )

    def stop(self) -> None:
        for fn in reversed(self.extra):
            try:
                fn()
            except Exception as e:  # teardown must go on
                say(f"cleanup failed: {e}")
        self.sb.stop()
        if os.environ.get("BENCH_KEEP") == "1":
            say(f"state (logs, operator trace) kept in {self.state}")
        else:
            shutil.rmtree(self.state, ignore_errors=True)


def start_bench(
    name: str,
    *,
    workers: int | None = None,
    node: bool = True,
    emulator_args: Sequence[str] = (),
    real_node: bool = False,
) -> Bench:
    """A fresh sandbox at REAL kubelet timing (time_scale=1.0), CRDs installed.

    ``node=False``: no node at all (pods are stored, never scheduled or run).
    ``workers`` or ``emulator_args`` (more ``sandbox.emulator`` flags) start the node
    emulator here rather than with the sandbox's defaults.
    ``real_node``: the real kubelet (tens of pods, not thousands); no fallback.
    """
    state = Path(tempfile.mkdtemp(prefix=f"pullmedic-bench-{name}-"))
    say(f"{name}: starting sandbox in {state}" + ("" if node else " (no node)"))
    own = node and not real_node and (workers is not None or bool(emulator_args))
    if real_node:
        sb = start_sandbox(state, time_scale=1.0, node="real", fallback=False)
    else:
        # Thousands of pods: the emulator, not the one real node a machine can hold.
        sb = start_sandbox(state, time_scale=1.0, emulator=node and not own, node="emulator")
    try:
        if own:
            sb.emulator = start_emulator_proc(sb, workers or 64, emulator_args)
        api = config.new_client_from_config(config_file=str(sb.kubeconfig))  # type: ignore[no-untyped-call]
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
        install_crds(api)
        core = client.CoreV1Api(api)
        wait_for(lambda: core.read_namespaced_service_account("default", "default"), "default SA")
    except BaseException:
        sb.stop()
        raise
    return Bench(
        sb, api, core, client.AppsV1Api(api), client.CustomObjectsApi(api), state, extra=[]
    )


def split_operators(
    b: Bench, splits: Sequence[int]
) -> tuple[dict[int, list[tuple[Shard, Operator]]], dict[str, ProcSampler]]:
    """One operator per shard of every split (``--shards N --shard-index I``), side by
    side, each with an RSS sampler; named ``op-I-of-N``."""
    ops: dict[int, list[tuple[Shard, Operator]]] = {}
    for n in splits:
        ops[n] = []
        for i in range(n):
            op = Operator(b, f"op-{i}-of-{n}", args=["--shards", str(n), "--shard-index", str(i)])
            op.start()
            ops[n].append((Shard(i, n) if n > 1 else Shard(), op))
    samplers = {op.name: ProcSampler(op.pid).start() for g in ops.values() for _, op in g}
    for sampler in samplers.values():
        b.extra.append(sampler.stop)
    return ops, samplers


def settled_rss(sampler: ProcSampler, seconds: float) -> float:
    """Median RSS (MiB) over the last ``seconds``."""
    window = sampler.window(time.monotonic() - seconds)
    return round(statistics.median(s[1] for s in window), 1) if window else 0.0


def build_peer(which: str) -> dict[str, Any]:
    """Run ``sandbox/peers.sh WHICH`` (a warm cache is a no-op); the binary's path is its
    last line on stdout. On failure ``error`` holds the tail of its output."""
    cmd = [str(REPO / "sandbox" / "peers.sh"), which]
    shown = f"sandbox/peers.sh {which}"
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"built": False, "command": shown, "error": "timed out after 1200 s"}
    except OSError as e:
        return {"built": False, "command": shown, "error": str(e)}
    lines = p.stdout.strip().splitlines()
    binary = Path(lines[-1]) if lines else None
    if p.returncode != 0 or binary is None or not binary.is_file():
        return {
            "built": False,
            "command": shown,
            "exit_code": p.returncode,
            "error": (p.stderr or p.stdout).strip()[-1500:] or "no binary",
        }
    return {"built": True, "binary": str(binary), "command": shown}


def last_line(text: str) -> str:
    """The last non-empty line (where a failed build says why)."""
    lines = [s for s in text.strip().splitlines() if s.strip()]
    return lines[-1].strip() if lines else ""


def start_emulator_proc(
    sb: Sandbox, workers: int, args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """The sandbox's node emulator with more pod workers (scale) or other flags (storm)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)  # the emulator must not import the operator
    return procs.spawn(
        [
            sys.executable,
            "-m",
            "sandbox.emulator",
            "--kubeconfig",
            str(sb.kubeconfig),
            "--time-scale",
            "1.0",
            "--workers",
            str(workers),
            "--log-level",
            "WARNING",
            *args,
        ],
        sb.state / "logs" / "emulator.log",
        env=env,
    )


def namespace(b: Bench, name: str, labels: dict[str, str] | None = None) -> None:
    b.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    wait_for(lambda: b.core.read_namespaced_service_account("default", name), f"SA in {name}")


def cluster_policy(b: Bench, name: str, namespaces: list[str], **spec: Any) -> None:
    create_cluster_policy(b.custom, name, namespaces, {"mode": "Remediate", **spec})


def wait_policy_ready(b: Bench, name: str, timeout: float = 60.0) -> None:
    def ready() -> bool:
        obj: dict[str, Any] = b.custom.get_cluster_custom_object(  # type: ignore[assignment]
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies", name
        )
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    wait_for(ready, f"policy {name} Ready (the operator is watching)", timeout)


def labelled(dep: Any, bench: str) -> Any:
    """Mark a Deployment's pods for the PodTracker's label selector."""
    dep.spec.template.metadata.labels["bench"] = bench
    return dep


# --------------------------------------------------------------------------------------
# The operator, as its own process (instrumented by bench.opshim)
# --------------------------------------------------------------------------------------


class Operator:
    """``python -m bench.opshim run ...``: the real operator plus a JSONL trace."""

    def __init__(
        self,
        b: Bench,
        name: str,
        *,
        extra_hosts: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> None:
        self.b = b
        self.name = name
        self.args = list(args)  # more operator flags (e.g. --shards 2 --shard-index 1)
        self.log = b.state / "logs" / f"{name}.log"
        self.trace_path = b.state / f"{name}.trace.jsonl"
        self.extra_hosts = list(extra_hosts)
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self, *, tracemalloc_frames: int = 0) -> None:
        self.source = operator_source_digest()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO)])
        env["BENCH_TRACE"] = str(self.trace_path)
        if tracemalloc_frames:
            env["BENCH_TRACEMALLOC"] = str(tracemalloc_frames)
        hosts = [r.host for r in self.b.sb.registries.all()] + self.extra_hosts
        self.metrics_port = procs.free_port()
        argv = [
            sys.executable,
            "-m",
            "bench.opshim",
            "run",
            "--kubeconfig",
            str(self.b.sb.kubeconfig),
            "--standalone",
            "--log-format",
            "json",
            "--metrics-port",
            str(self.metrics_port),
            "--liveness-port",
            str(procs.free_port()),
            "--bind",
            "127.0.0.1",
            "--allow-address",
            "127.0.0.0/8",
        ]
        for h in hosts:
            argv += ["--insecure-registry", h]
        argv += self.args
        self.proc = procs.spawn(argv, self.log, env=env)
        self.b.extra.append(self.stop)
        wait_for(self._metrics_up, f"{self.name} metrics endpoint", 60)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _metrics_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited: see {self.log}")
        return bool(self.metrics())

    def metrics(self) -> dict[str, float]:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        return parse_prometheus(text, "pullmedic_")

    def trace(self) -> list[dict[str, Any]]:
        if not self.trace_path.exists():
            return []
        out = []
        for line in self.trace_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line being written
        return out

    def request_snapshot(self, timeout: float = 120.0) -> dict[str, Any] | None:
        """Ask the shim for a memory snapshot (tracemalloc when enabled, gc type counts)."""
        req = Path(f"{self.trace_path}.snap-request")
        out = Path(f"{self.trace_path}.snap.json")
        out.unlink(missing_ok=True)
        req.write_text("1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if out.exists():
                try:
                    data: dict[str, Any] = json.loads(out.read_text())
                    return data
                except ValueError:
                    pass
            time.sleep(0.5)
        return None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None


def operator_source_digest() -> str:
    """sha256 over operator/pullmedic/*.py: which operator code a figure was measured on."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "operator" / "pullmedic").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def parse_prometheus(text: str, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or not line.startswith(prefix):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


class ProcSampler:
    """Samples a process's RSS (VmRSS, VmHWM) and CPU seconds from /proc every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, rss MiB, cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float, float]:
        """(VmRSS MiB, VmHWM MiB, CPU seconds user+system)."""
        rss = hwm = 0.0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick
        return rss, hwm, cpu

    def start(self) -> ProcSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, _, cpu = self.read()
            except (OSError, ValueError, IndexError):
                return
            self.samples.append((time.monotonic(), rss, cpu))
            self._stop.wait(self.every)

    def window(self, start: float, end: float | None = None) -> list[tuple[float, float, float]]:
        end = end if end is not None else time.monotonic()
        return [s for s in self.samples if start <= s[0] <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------
# The API server's own request counters
# --------------------------------------------------------------------------------------

_REQ = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def apiserver_requests(b: Bench) -> Counter[tuple[str, str]]:
    """``apiserver_request_total`` summed by (verb, resource[/subresource])."""
    with b.http() as h:
        text = h.get("/metrics").text
    out: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        m = _REQ.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        res = labels.get("resource", "")
        if labels.get("subresource"):
            res += "/" + labels["subresource"]
        out[(labels.get("verb", ""), res)] += int(float(m.group("value")))
    return out


def write_delta(
    before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]
) -> dict[str, int]:
    """API writes between two snapshots, as {"VERB resource": n} (all clients)."""
    out: dict[str, int] = {}
    for key, n in after.items():
        d = n - before.get(key, 0)
        if d > 0 and key[0] in WRITE_VERBS:
            out[f"{key[0]} {key[1]}"] = d
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def operator_writes(trace: list[dict[str, Any]]) -> dict[str, int]:
    """The operator's own API writes (from its trace) as {"VERB resource": n}."""
    out: Counter[str] = Counter()
    for r in trace:
        if r.get("k") == "api" and r.get("m") in WRITE_VERBS:
            out[f"{r['m']} {api_resource(str(r['p']))}"] += 1
    return dict(out.most_common())


def api_resource(path: str) -> str:
    """``/api/v1/namespaces/x/pods/y/status`` -> ``pods/status``."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    if parts[:1] == ["namespaces"] and len(parts) >= 3:
        parts = parts[2:]
    res = parts[0] if parts else "?"
    return f"{res}/{parts[2]}" if len(parts) >= 3 else res


# --------------------------------------------------------------------------------------
# Pods as the bench sees them: one raw watch, a few fields kept
# --------------------------------------------------------------------------------------


@dataclass
class PodInfo:
    ns: str
    app: str
    image: str
    phase: str
    waiting: str
    deleting: bool


@dataclass
class Goal:
    ns: str
    app: str
    replicas: int
    image: str | None  # every replica must run this image (None: any)
    met_at: float | None = None  # wall clock


class PodTracker:
    """Watches pods with a label selector; records first pull failures and met goals.

    Times are wall clock (``time.time()``) so they compare with the operator's trace.
    """

    def __init__(self, b: Bench, selector: str) -> None:
        self.b = b
        self.selector = selector
        self.pods: dict[str, PodInfo] = {}
        self.by_app: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.first_fail: dict[tuple[str, str], float] = {}
        self.first_fail_any: float | None = None
        self.goals: dict[tuple[str, str], Goal] = {}
        self.on_first_fail: dict[tuple[str, str], Callable[[], None]] = {}
        self.lock = threading.Lock()
        self.events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-tracker", daemon=True)
        self._synced = threading.Event()

    def start(self) -> PodTracker:
        self._thread.start()
        if not self._synced.wait(60):
            raise RuntimeError("pod tracker did not sync")
        return self

    def stop(self) -> None:
        self._stop.set()

    # -- queries -----------------------------------------------------------------------

    def goal(self, ns: str, app: str, replicas: int, image: str | None) -> Goal:
        with self.lock:
            g = self.goals[(ns, app)] = Goal(ns, app, replicas, image)
            self._check(g)
            return g

    def all_met(self) -> bool:
        with self.lock:
            return all(g.met_at is not None for g in self.goals.values())

    def counts(self) -> Counter[str]:
        with self.lock:
            c: Counter[str] = Counter()
            for p in self.pods.values():
                if p.deleting:
                    c["terminating"] += 1
                elif p.phase == "Running":
                    c["running"] += 1
                elif p.waiting:
                    c[p.waiting] += 1
                else:
                    c["pending"] += 1
            return c

    # -- the watch ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.b.http(timeout=90) as h:
                    rv = self._list(h)
                    self._synced.set()
                    self._watch(h, rv)
            except Exception as e:
                if not self._stop.is_set():
                    say(f"pod tracker: {type(e).__name__}: {e}; relisting")
                    time.sleep(0.5)

    def _list(self, h: httpx.Client) -> str:
        seen: dict[str, dict[str, Any]] = {}
        cont = ""
        rv = ""
        while True:
            params = {"labelSelector": self.selector, "limit": "1000"}
            if cont:
                params["continue"] = cont
            doc = h.get("/api/v1/pods", params=params).raise_for_status().json()
            for pod in doc.get("items") or []:
                seen[pod["metadata"]["uid"]] = pod
            meta = doc.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            cont = str(meta.get("continue") or "")
            if not cont:
                break
        now = time.time()
        with self.lock:
            for uid in [u for u in self.pods if u not in seen]:
                self._remove(uid, now)
            for pod in seen.values():
                self._apply(pod, now)
        return rv

    def _watch(self, h: httpx.Client, rv: str) -> None:
        params = {
            "labelSelector": self.selector,
            "watch": "true",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "30",
        }
        with h.stream("GET", "/api/v1/pods", params=params) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"watch: HTTP {resp.status_code}")
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                ev = json.loads(line)
                typ, obj = ev.get("type"), ev.get("object") or {}
                if typ == "ERROR":
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                if typ == "BOOKMARK":
                    continue
                now = time.time()
                fire: Callable[[], None] | None = None
                with self.lock:
                    self.events += 1
                    if typ == "DELETED":
                        self._remove(obj["metadata"]["uid"], now)
                    else:
                        fire = self._apply(obj, now)
                if fire is not None:
                    threading.Thread(target=fire, name="first-fail-hook", daemon=True).start()

    def _apply(self, pod: dict[str, Any], now: float) -> Callable[[], None] | None:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        uid = meta["uid"]
        ns = meta.get("namespace", "")
        app = (meta.get("labels") or {}).get("app", "")
        waiting = ""
        for cs in status.get("containerStatuses") or ():
            waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason") or waiting
        containers = spec.get("containers") or [{}]
        info = PodInfo(
            ns,
            app,
            str(containers[0].get("image", "")),
            str(status.get("phase", "")),
            waiting,
            bool(meta.get("deletionTimestamp")),
        )
        self.pods[uid] = info
        self.by_app[(ns, app)].add(uid)
        fire = None
        if waiting == "ErrImagePull" and (ns, app) not in self.first_fail:
            self.first_fail[(ns, app)] = now
            if self.first_fail_any is None:
                self.first_fail_any = now
            fire = self.on_first_fail.get((ns, app))
        g = self.goals.get((ns, app))
        if g is not None:
            self._check(g, now)
        return fire

    def _remove(self, uid: str, now: float) -> None:
        info = self.pods.pop(uid, None)
        if info is None:
            return
        self.by_app[(info.ns, info.app)].discard(uid)
        g = self.goals.get((info.ns, info.app))
        if g is not None:
            self._check(g, now)

    def _check(self, g: Goal, now: float | None = None) -> None:
        if g.met_at is not None:
            return
        live = [
            self.pods[u] for u in self.by_app.get((g.ns, g.app), ()) if not self.pods[u].deleting
        ]
        if len(live) == g.replicas and all(
            p.phase == "Running" and (g.image is None or p.image == g.image) for p in live
        ):
            g.met_at = now if now is not None else time.time()


def sandbox_pids(b: Bench, operator: Operator | None = None) -> dict[str, int]:
    """Every process of the run by role (for CPU accounting)."""
    pids = {name: p.pid for name, p in b.sb.cluster.procs.items()}
    if b.sb.emulator is not None:
        pids["node emulator"] = b.sb.emulator.pid
    for r in b.sb.registries.all():
        if r.process is not None:
            pids[f"registry {r.name}"] = r.process.pid
    if operator is not None and operator.proc is not None:
        pids["pullmedic operator"] = operator.pid
    pids["bench (watch, proxies, token server)"] = os.getpid()
    return pids


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """utime+stime (children excluded) per process, now."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2 :].split()
        out[name] = (int(f[11]) + int(f[12])) / tick
    return out


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy since boot (every process, ours or not:
    user, nice, system, irq, softirq, steal from /proc/stat)."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    busy = sum(int(f[i]) for i in (1, 2, 3, 6, 7, 8) if i < len(f))
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_breakdown(
    before: dict[str, float],
    after: dict[str, float],
    wall: float,
    machine: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """CPU seconds per process over a window, and the share of the machine they used.

    ``machine``: :func:`machine_cpu` at the window's start and end; adds the machine's busy
    share over the window and the CPU seconds of processes that are not the run's (other
    users of a shared machine).
    """
    used = {k: round(after[k] - before.get(k, 0.0), 1) for k in after}
    total = sum(used.values())
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "cpu_s": dict(sorted(used.items(), key=lambda kv: -kv[1])),
        "cpu_s_total": round(total, 1),
        "machine_busy_pct": round(100 * total / (wall * cores), 1) if wall else None,
    }
    if machine is not None and wall:
        all_busy = machine[1] - machine[0]
        out["machine_all_busy_pct"] = round(100 * all_busy / (wall * cores), 1)
        out["other_processes_cpu_s"] = round(max(all_busy - total, 0.0), 1)
    return out


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


class PySpy:
    """``py-spy record`` on a process (raw collapsed stacks), stopped with SIGINT."""

    def __init__(
        self, pid: int, out: Path, rate: int = 100, focus: Sequence[str] = ("pullmedic", "kopf")
    ) -> None:
        self.out = out
        self.focus = tuple(focus)
        exe = Path(sys.executable).parent / "py-spy"
        self.available = exe.exists()
        self.proc: subprocess.Popen[bytes] | None = None
        if self.available:
            self.proc = subprocess.Popen(
                [
                    str(exe),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate),
                    "--nonblocking",
                    "--threads",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--duration",
                    "3600",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        return summarize_stacks(self.out, focus=self.focus) if self.out.exists() else None


def summarize_stacks(
    path: Path, top: int = 12, focus: Sequence[str] = ("pullmedic", "kopf")
) -> dict[str, Any]:
    """Self time by leaf function and inclusive time by function, from collapsed stacks;
    ``focus``: the inclusive time of functions whose frame names one of these strings."""
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f and not f.startswith("thread (")]
        if not frames:
            continue
        total += count
        leaf[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)]

    interesting = Counter({k: v for k, v in incl.items() if "pullmedic" in k or "kopf" in k})
    focused = Counter({k: v for k, v in incl.items() if any(f in k for f in focus)})
    return {
        "samples": total,
        "self_pct": pct(leaf),
        "inclusive_pct": pct(incl),
        "inclusive_pullmedic_kopf_pct": pct(interesting),
        "inclusive_focus_pct": pct(focused),
    }


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    m = re.match(r"(.*) \((.*?):?(\d+)?\)$", frame)
    if not m:
        return frame
    fn, path = m.group(1), m.group(2)
    for marker in ("site-packages/", "/operator/", "/lib/python3", f"{REPO}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{fn} ({path})"
