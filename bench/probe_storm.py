"""Probe storm: 1,000 concurrent diagnoses over 10 images, with and without probe economy.

Not a test. Starts the sandbox registries, pushes 10 distinct images (some broken), then
runs the same 1,000 diagnoses twice: once with the prober's cache + single-flight (and
shared pings/tokens), once as a naive baseline with all of that off. Requests are counted
per kind at the HTTP transport, so the numbers are what registries actually receive.

    .venv/bin/python bench/probe_storm.py [--diagnoses 1000]   # prints the table
    .venv/bin/python -m bench probe_storm   # and writes bench/results/probe_storm.json

The point: requests should scale with distinct images, not with diagnoses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.common import table  # noqa: E402
from bench.request_kinds import CountingTransport  # noqa: E402
from pullmedic.core.dockerconfig import PullSecret  # noqa: E402
from pullmedic.core.keyring import Keyring  # noqa: E402
from pullmedic.core.platforms import Platform  # noqa: E402
from pullmedic.probe.config import ClientConfig  # noqa: E402
from pullmedic.probe.netguard import AddressPolicy, guarded_transport  # noqa: E402
from pullmedic.probe.prober import Prober, ProberConfig  # noqa: E402
from sandbox.images import push_image  # noqa: E402
from sandbox.registries import RegistrySet, start_registries  # noqa: E402

KINDS = ("ping", "token", "manifest_head", "manifest_get", "blob", "tags")


def _keyring(name: str, host: str, user: str, password: str) -> Keyring:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    raw = json.dumps({"auths": {host: {"auth": auth}}}).encode()
    secret = PullSecret(
        "bench",
        name,
        "kubernetes.io/dockerconfigjson",
        {".dockerconfigjson": base64.b64encode(raw).decode()},
    )
    return Keyring.from_secrets([secret])[0]


def setup(regs: RegistrySet) -> list[tuple[str, Keyring]]:
    """Ten distinct (image, keyring) pairs: five pullable, five broken in different ways."""
    o, b, t = regs.open, regs.basic, regs.bearer
    push_image(o, "app/a", "1.0.0")
    push_image(o, "app/b", "2.1.0", platforms=("linux/amd64", "linux/arm64"), index="oci")
    for i in range(1, 4):
        push_image(o, "app/c", f"1.0.{i}")
    push_image(o, "app/armonly", "1", platforms=("linux/arm64",))
    push_image(b, "team/api", "1.0")
    push_image(b, "team/api2", "1.0")
    push_image(t, "public/tool", "1.0")
    push_image(t, "private/db", "1")
    push_image(t, "private/cache", "2")
    alice = _keyring("alice", b.host, "alice", "alice-secret")
    alice_bad = _keyring("alice-old", b.host, "alice", "rotated")
    bob = _keyring("bob", t.host, "bob", "bob-secret")
    empty = Keyring()
    return [
        (f"{o.host}/app/a:1.0.0", empty),  # available
        (f"{o.host}/app/b:2.1.0", empty),  # available (index)
        (f"{o.host}/app/c:1.0.9", empty),  # tag typo -> verified fix
        (f"{o.host}/app/missing:1", empty),  # repository missing
        (f"{o.host}/app/armonly:1", empty),  # platform mismatch
        (f"{b.host}/team/api:1.0", alice),  # available with Basic
        (f"{b.host}/team/api2:1.0", alice_bad),  # credentials rejected
        (f"{t.host}/public/tool:1.0", empty),  # available, anonymous token
        (f"{t.host}/private/db:1", empty),  # not found or private
        (f"{t.host}/private/cache:2", bob),  # available with token
    ]


async def storm(
    regs: RegistrySet, cases: list[tuple[str, Keyring]], n: int, economy: bool
) -> dict[str, object]:
    hosts = {r.host for r in regs.all()} | {regs.token_url.split("/")[2]}
    config = ClientConfig(
        insecure_hosts=frozenset(hosts),
        address_policy=AddressPolicy(("127.0.0.0/8",)),
        # Same generous limits for both runs so the comparison is about request counts.
        per_host_concurrency=16,
        per_host_rate=5000.0,
        per_host_burst=5000,
        cache_auth=economy,
        content_cache_bytes=ClientConfig.content_cache_bytes if economy else 0,
        read_timeout=30.0,
        operation_timeout=120.0,
    )
    pconfig = ProberConfig(cache=economy, single_flight=economy)
    counting = CountingTransport(guarded_transport(config.address_policy))
    platform = Platform.parse("linux/amd64")
    tokens_before = regs.token_server.request_count if regs.token_server else 0
    async with Prober(config, prober_config=pconfig, transport=counting) as prober:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(prober.diagnose(img, kr, platform) for img, kr in (cases * (n // len(cases) + 1))[:n])
        )
        wall = time.perf_counter() - start
    causes = Counter(str(r.cause) for r in results)
    token_server = (regs.token_server.request_count if regs.token_server else 0) - tokens_before
    return {
        "economy": economy,
        "diagnoses": n,
        "distinct_images": len(cases),
        "wall_seconds": round(wall, 3),
        "requests": {k: counting.counts.get(k, 0) for k in KINDS},
        "total_requests": counting.total,
        "token_server_requests": token_server,
        "causes": dict(sorted(causes.items())),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diagnoses", type=int, default=1000)
    args = ap.parse_args()
    r = measure(args.diagnoses)
    print(render(r))
    if r["economy"]["causes"] != r["baseline"]["causes"]:
        print(f"baseline causes differ: {r['baseline']['causes']}")
    return 0


def run(quick: bool = False) -> dict[str, Any]:
    """``python -m bench probe_storm``: the default size (quick: 200 diagnoses)."""
    return measure(200 if quick else 1000)


def measure(diagnoses: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="probe-storm-") as tmp:
        regs = start_registries(Path(tmp))
        try:
            cases = setup(regs)
            with_economy = asyncio.run(storm(regs, cases, diagnoses, economy=True))
            baseline = asyncio.run(storm(regs, cases, diagnoses, economy=False))
        finally:
            regs.stop()
    return {"economy": with_economy, "baseline": baseline}


def render(r: dict[str, Any]) -> str:
    eco, base = r["economy"], r["baseline"]
    rows: list[list[Any]] = [[k, eco["requests"][k], base["requests"][k]] for k in KINDS]
    rows += [
        ["total", eco["total_requests"], base["total_requests"]],
        ["token server", eco["token_server_requests"], base["token_server_requests"]],
        ["wall seconds", eco["wall_seconds"], base["wall_seconds"]],
    ]
    out = table(
        f"Probe storm: {eco['diagnoses']} concurrent diagnoses over {eco['distinct_images']} "
        "distinct images, registry requests",
        ["requests", "cache + single-flight", "naive"],
        rows,
    )
    return out + f"\nCauses: {eco['causes']}\n"


def headline(r: dict[str, Any]) -> str:
    eco, base = r["economy"], r["baseline"]
    return (
        f"{eco['diagnoses']:,} concurrent diagnoses over {eco['distinct_images']} images: "
        f"{eco['total_requests']} registry requests with the prober's cache and single-flight, "
        f"{base['total_requests']} without"
    )


if __name__ == "__main__":
    raise SystemExit(main())
