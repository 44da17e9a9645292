"""Audit cost: registry requests per hour for 1,000 workloads, with the budget and without.

Not a test. A real control plane holds 1,000 Deployments (replicas 0) over 40 images on two
real registries (open and Bearer, a few tags deleted); the operator's Auditor lists them
through the API and checks their images with the real prober, over six simulated hours
(one tick per simulated minute; probe caches are emptied every simulated hour, as their
TTLs would have expired). Requests are counted at the HTTP transport, so the numbers are
what the registries receive. The baseline checks every workload every hour without a
budget (what a naive audit loop costs).

    .venv/bin/python bench/audit_budget.py [--workloads 1000] [--hours 6]   # prints the table
    .venv/bin/python -m bench audit_budget     # and writes bench/results/audit_budget.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

import httpx  # noqa: E402
from kubernetes import client, config  # noqa: E402

from bench.common import table  # noqa: E402
from pullmedic.control.audit import Auditor, AuditSettings  # noqa: E402
from pullmedic.kube.client import RestKube, Timeouts, configure  # noqa: E402
from pullmedic.kube.lookups import Lookups  # noqa: E402
from pullmedic.probe.config import ClientConfig  # noqa: E402
from pullmedic.probe.netguard import AddressPolicy, guarded_transport  # noqa: E402
from pullmedic.probe.prober import Prober  # noqa: E402
from sandbox.cluster import start_cluster, wait_ready  # noqa: E402
from sandbox.images import delete_tag, push_image  # noqa: E402
from sandbox.registries import start_registries  # noqa: E402

NS = "audit-bench"
DELETED_TAGS = 3


class HostCounting(httpx.AsyncBaseTransport):
    """Requests per registry host (token server included), as the hosts see them."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.hosts: Counter[str] = Counter()
        self.manifest_gets = 0  # what Docker Hub counts as pulls (HEADs are free)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts[request.url.netloc.decode()] += 1
        if request.method == "GET" and "/manifests/" in request.url.path:
            self.manifest_gets += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=1000)
    ap.add_argument("--hours", type=int, default=6)
    args = ap.parse_args()
    print(render(measure(args.workloads, args.hours)))
    return 0


def run(quick: bool = False) -> dict[str, Any]:
    """``python -m bench audit_budget``: the default sizes (quick: 100 workloads, 2 h)."""
    return measure(100, 2) if quick else measure(1000, 6)


def measure(workloads: int, hours: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pullmedic-audit-bench-") as tmp:
        cluster = start_cluster(Path(tmp) / "cluster")
        regs = start_registries(Path(tmp) / "registries")
        try:
            wait_ready(cluster)
            images = _images(regs)
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            _workloads(api, images, workloads)
            rows = [
                _measure(cluster, regs, "budget 25/host/3h (default)", 25, 3 * 3600, hours),
                _measure(cluster, regs, "no budget, every workload hourly", 10**9, 3600, hours),
            ]
        finally:
            regs.stop()
            cluster.stop()
    return {
        "workloads": workloads,
        "images": len(images),
        "deleted_tags": DELETED_TAGS,
        "hours": hours,
        "runs": rows,
    }


def render(r: dict[str, Any]) -> str:
    return table(
        f"Audit of {r['workloads']} workloads over {r['images']} images "
        f"({r['deleted_tags']} tags deleted upstream), {r['hours']} simulated hours",
        [
            "run",
            "checks per hour",
            "registry requests per hour",
            "manifest GETs per hour",
            "busiest host per hour",
            "found",
        ],
        [
            [
                x["run"],
                round(x["checks_per_hour"], 1),
                round(x["requests_per_hour"], 1),
                round(x.get("manifest_gets_per_hour", float("nan")), 1),
                round(x["max_host_requests_per_hour"], 1),
                x["found"],
            ]
            for x in r["runs"]
        ],
    )


def headline(r: dict[str, Any]) -> str:
    default, naive = r["runs"][0], r["runs"][-1]
    return (
        f"{r['workloads']:,} workloads on {r['images']} images: "
        f"{default['requests_per_hour']:.0f} registry requests per hour with the default "
        f"budget, {default.get('manifest_gets_per_hour', 0):.0f} of them manifest GETs (what "
        f"Docker Hub counts as pulls; {default['found']} broken workloads found), "
        f"{naive['requests_per_hour']:.0f} checking every workload hourly "
        f"({naive['found']} found)"
    )


def _images(regs: Any) -> list[str]:
    out = []
    for i in range(20):
        push_image(regs.open, f"team/app{i}", "1.0")
        out.append(f"{regs.open.host}/team/app{i}:1.0")
        push_image(regs.bearer, f"public/tool{i}", "2.0")
        out.append(f"{regs.bearer.host}/public/tool{i}:2.0")
    for i in range(DELETED_TAGS):  # tags deleted upstream under running workloads
        delete_tag(regs.open, f"team/app{i}", "1.0")
    return out


def _workloads(api: Any, images: list[str], n: int) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    for i in range(n):
        image = images[i % len(images)]
        apps.create_namespaced_deployment(
            NS,
            client.V1Deployment(
                metadata=client.V1ObjectMeta(name=f"w{i:04d}"),
                spec=client.V1DeploymentSpec(
                    replicas=0,
                    selector=client.V1LabelSelector(match_labels={"app": f"w{i}"}),
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels={"app": f"w{i}"}),
                        spec=client.V1PodSpec(
                            containers=[client.V1Container(name="app", image=image)]
                        ),
                    ),
                ),
            ),
        )


def _measure(
    cluster: Any, regs: Any, name: str, per_host: int, period: float, hours: int
) -> dict[str, Any]:
    hosts = {r.host for r in regs.all()} | {regs.token_url.split("/")[2]}
    cfg = ClientConfig(
        insecure_hosts=frozenset(hosts), address_policy=AddressPolicy(("127.0.0.0/8",))
    )
    counting = HostCounting(guarded_transport(cfg.address_policy))

    async def run() -> dict[str, Any]:
        kcfg = client.Configuration()
        config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=kcfg)
        kube = RestKube(client.ApiClient(configure(kcfg, Timeouts(), 8)), workers=8)
        clock = Clock()
        prober = Prober(cfg, transport=counting)
        auditor = Auditor(
            kube,
            prober,
            Lookups(kube, "linux/amd64"),
            AuditSettings(checks_per_host=per_host, period=period),
            wall=clock,
        )
        checks = 0
        items = []
        for minute in range(hours * 60):
            if minute % 60 == 0:
                prober.clear_cache()  # an hour later every probe cache entry has expired
                items = await auditor.workloads([NS])  # the operator lists every tick
            run = await auditor.run((i, None) for i in items)
            checks += run.checked
            clock.t += 60
        await prober.aclose()
        kube.close()
        return {"checks": checks, "found": len(auditor.unavailable())}

    result = asyncio.run(run())
    total = sum(counting.hosts.values())
    return {
        "run": name,
        "checks_per_hour": result["checks"] / hours,
        "requests_per_hour": total / hours,
        "manifest_gets_per_hour": counting.manifest_gets / hours,
        "max_host_requests_per_hour": max(counting.hosts.values(), default=0) / hours,
        "found": result["found"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
