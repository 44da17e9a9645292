"""``python -m bench.opshim run ...``: the real operator, instrumented for the benchmarks.

Not part of the operator package. It wraps a few operator functions (nothing is changed
in what they do) and appends JSON lines to ``$BENCH_TRACE``:

* ``api``: every Kubernetes API call the operator makes itself (method, path, status,
  duration, the failure group it was made for);
* ``reg``: every registry request (kind as ``bench.request_kinds.request_kind`` counts it,
  host, path, a salted hash of the Authorization header so credentials can be told apart
  without being recorded, status, duration);
* ``seen``: a pod first entering the engine (the operator noticed its pull failure);
* ``diag``: one diagnosis (image, cause, seconds);
* ``decide``: one failure group handled (first seen, registry seconds spent, cause);
* ``action``: a plan applied (first seen, registry seconds before it, action outcomes).

``$BENCH_TRACEMALLOC=N`` starts tracemalloc with N frames before anything is imported;
writing ``$BENCH_TRACE.snap-request`` makes it dump ``$BENCH_TRACE.snap.json`` (top
allocation sites, and live object counts by type).
"""

from __future__ import annotations

import contextvars
import gc
import hashlib
import json
import os
import secrets
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

_FRAMES = int(os.environ.get("BENCH_TRACEMALLOC", "0") or 0)
if _FRAMES:
    tracemalloc.start(_FRAMES)

import httpx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
_CTX: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bench_ctx", default=None
)


class Trace:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        self.lock = threading.Lock()

    def write(self, **rec: Any) -> None:
        rec["t"] = time.time()
        line = json.dumps(rec, default=str)
        with self.lock:
            self.f.write(line + "\n")


def _wall(mono: float) -> float:
    return time.time() - (time.monotonic() - mono)


def install(trace: Trace) -> None:
    from bench.request_kinds import request_kind
    from pullmedic.control import engine, remediation
    from pullmedic.kube import actuator
    from pullmedic.kube import client as kube
    from pullmedic.probe import client, netguard, prober
    from pullmedic.probe.config import ClientConfig

    salt = secrets.token_bytes(16)

    # -- Kubernetes API calls (run in the kube thread pool: context is copied) --
    orig_call = kube.RestKube._once

    def _call(self: Any, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        status: Any = 200
        try:
            return orig_call(self, method, path, *args, **kwargs)
        except Exception as e:
            status = getattr(e, "status", type(e).__name__)
            raise
        finally:
            ctx = _CTX.get()
            trace.write(
                k="api",
                m=method,
                p=path,
                s=status,
                d=round(time.monotonic() - t0, 4),
                g=ctx["group"] if ctx else None,
            )

    kube.RestKube._once = _call  # type: ignore[method-assign]

    # -- registry requests ---------------------------------------------------------------
    class RecordingTransport(httpx.AsyncBaseTransport):
        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            auth = request.headers.get("authorization", "")
            ah = hashlib.sha256(salt + auth.encode()).hexdigest()[:12] if auth else ""
            t0 = time.monotonic()
            status: Any = "error"
            try:
                resp = await self.inner.handle_async_request(request)
                status = resp.status_code
                return resp
            finally:
                trace.write(
                    k="reg",
                    kind=request_kind(request.method, request.url),
                    m=request.method,
                    host=request.url.netloc.decode(),
                    p=request.url.path,
                    a=ah,
                    s=status,
                    d=round(time.monotonic() - t0, 4),
                )

        async def aclose(self) -> None:
            await self.inner.aclose()

    orig_rc_init = client.RegistryClient.__init__

    def _rc_init(
        self: Any,
        config: Any = None,
        transport: httpx.AsyncBaseTransport | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        cfg = config or ClientConfig()
        if transport is None:
            transport = netguard.guarded_transport(cfg.address_policy, verify=cfg.verify_tls)
        orig_rc_init(self, cfg, RecordingTransport(transport), *args, **kwargs)

    client.RegistryClient.__init__ = _rc_init  # type: ignore[method-assign]

    # -- diagnoses -----------------------------------------------------------------------
    orig_diagnose = prober.Prober.diagnose

    async def _diagnose(self: Any, image: str, *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        d = await orig_diagnose(self, image, *args, **kwargs)
        dt = time.monotonic() - t0
        ctx = _CTX.get()
        if ctx is not None:
            ctx["probe"] += dt
            ctx["probes"] += 1
        trace.write(k="diag", image=image, cause=str(d.cause), d=round(dt, 4))
        return d

    prober.Prober.diagnose = _diagnose  # type: ignore[method-assign]

    # -- the engine ----------------------------------------------------------------------
    orig_on_pod = engine.Engine.on_pod

    def _on_pod(self: Any, event_type: str | None, body: Any, *args: Any, **kwargs: Any) -> None:
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        new = uid not in self.pods
        orig_on_pod(self, event_type, body, *args, **kwargs)
        if new and uid in self.pods:
            trace.write(
                k="seen",
                uid=uid,
                ns=meta.get("namespace"),
                name=meta.get("name"),
                app=(meta.get("labels") or {}).get("app"),
            )

    engine.Engine.on_pod = _on_pod  # type: ignore[method-assign]

    orig_decide = remediation.Remediator.decide

    async def _decide(self: Any, group: Any, *args: Any, **kwargs: Any) -> Any:
        ctx: dict[str, Any] = {
            "group": "/".join(group.key),
            "fs": _wall(group.first_seen),
            "probe": 0.0,
            "probes": 0,
        }
        token = _CTX.set(ctx)
        start = time.time()
        try:
            return await orig_decide(self, group, *args, **kwargs)
        finally:
            _CTX.reset(token)
            trace.write(
                k="decide",
                g=ctx["group"],
                fs=ctx["fs"],
                start=start,
                probe=round(ctx["probe"], 4),
                probes=ctx["probes"],
                cause=group.cause,
                pods=len(group.pods),
            )

    remediation.Remediator.decide = _decide  # type: ignore[method-assign]

    orig_apply = actuator.Actuator.apply

    async def _apply(self: Any, plan: Any, *args: Any, **kwargs: Any) -> Any:
        results = await orig_apply(self, plan, *args, **kwargs)
        ctx = _CTX.get()
        trace.write(
            k="action",
            g=ctx["group"] if ctx else None,
            fs=ctx["fs"] if ctx else None,
            probe=round(ctx["probe"], 4) if ctx else None,
            cause=str(plan.cause),
            results=[[str(r.action.type), r.outcome] for r in results],
        )
        return results

    actuator.Actuator.apply = _apply  # type: ignore[method-assign]


def _snapshots(trace_path: str) -> None:
    """Dump memory facts when asked (a file appears); runs in a daemon thread."""
    req = Path(f"{trace_path}.snap-request")
    out = Path(f"{trace_path}.snap.json")
    while True:
        time.sleep(0.5)
        if not req.exists():
            continue
        req.unlink(missing_ok=True)
        data: dict[str, Any] = {"at": time.time()}
        gc.collect()
        types: Counter[str] = Counter(type(o).__name__ for o in gc.get_objects())
        data["gc_objects"] = sum(types.values())
        data["gc_types_top"] = types.most_common(25)
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            cur, peak = tracemalloc.get_traced_memory()
            data["traced_current_mib"] = round(cur / 2**20, 1)
            data["traced_peak_mib"] = round(peak / 2**20, 1)
            data["by_file"] = [
                [str(s.traceback[0].filename), round(s.size / 2**20, 2), s.count]
                for s in snap.statistics("filename")[:20]
            ]
            data["by_line"] = [
                [str(s.traceback[0]), round(s.size / 2**20, 2), s.count]
                for s in snap.statistics("lineno")[:25]
            ]
            data["by_traceback"] = [
                {
                    "mib": round(s.size / 2**20, 2),
                    "count": s.count,
                    "frames": [str(f) for f in s.traceback],
                }
                for s in snap.statistics("traceback")[:8]
            ]
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(out)


def main() -> int:
    sys.path[:0] = [str(REPO / "operator")]
    path = os.environ.get("BENCH_TRACE")
    if path:
        install(Trace(path))
        threading.Thread(target=_snapshots, args=(path,), name="bench-snap", daemon=True).start()
    from pullmedic.app.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
