"""Integrity storm: many workloads failing on one image whose layer is gone.

Not a test. Starts the sandbox registries, pushes an image and deletes one of its layer
blobs (the registry still lists it), then runs the diagnoses a storm causes: one per
failing workload (the engine decides per workload, not per pod), all at once, each
distrusting a cached "pullable" as the engine does after a failed pull. Requests are
counted per kind at the HTTP transport. The baseline is the same storm with the prober's
cache and single-flight off.

    .venv/bin/python bench/integrity_storm.py [--workloads 100] [--pods-per-workload 10]
    .venv/bin/python -m bench integrity_storm   # and writes bench/results/integrity_storm.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.common import table  # noqa: E402
from bench.request_kinds import CountingTransport  # noqa: E402
from pullmedic.core.diagnosis import Cause  # noqa: E402
from pullmedic.core.keyring import Keyring  # noqa: E402
from pullmedic.core.platforms import Platform  # noqa: E402
from pullmedic.probe.config import ClientConfig  # noqa: E402
from pullmedic.probe.netguard import AddressPolicy, guarded_transport  # noqa: E402
from pullmedic.probe.prober import Prober, ProberConfig  # noqa: E402
from sandbox.damage import delete_blob, manifest  # noqa: E402
from sandbox.images import push_image  # noqa: E402
from sandbox.registries import start_registries  # noqa: E402

KINDS = ("ping", "token", "manifest_head", "manifest_get", "blob", "tags")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=100)
    ap.add_argument("--pods-per-workload", type=int, default=10)
    args = ap.parse_args()
    print(render(measure(args.workloads, args.pods_per_workload)))
    return 0


def run(quick: bool = False) -> dict[str, Any]:
    """``python -m bench integrity_storm``: the default sizes (quick: 20 workloads)."""
    return measure(20 if quick else 100, 10)


def measure(workloads: int, pods_per_workload: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pullmedic-integrity-") as tmp:
        regs = start_registries(Path(tmp))
        try:
            push_image(regs.open, "storm/broken", "1.0")
            layer = manifest(regs.open, "storm/broken", "1.0")["layers"][-1]["digest"]
            delete_blob(regs.open, "storm/broken", layer)
            image = f"{regs.open.host}/storm/broken:1.0"
            rows = [
                storm(regs, image, workloads, economy=True),
                storm(regs, image, workloads, economy=False),
            ]
        finally:
            regs.stop()
    return {
        "workloads": workloads,
        "pods": workloads * pods_per_workload,
        "runs": [
            {
                "run": name,
                "causes": causes,
                "requests": {k: counts.get(k, 0) for k in KINDS},
                "total": sum(counts.values()),
            }
            for name, causes, counts in rows
        ],
    }


def render(r: dict[str, Any]) -> str:
    return table(
        f"Integrity storm: {r['pods']} failing pods in {r['workloads']} workloads, one image "
        "with a layer gone: requests the registry received",
        ["run", "cause", *KINDS, "total"],
        [
            [x["run"], x["causes"], *(x["requests"][k] for k in KINDS), x["total"]]
            for x in r["runs"]
        ],
    )


def headline(r: dict[str, Any]) -> str:
    economy, naive = r["runs"][0], r["runs"][-1]
    return (
        f"{r['workloads']:,} workloads failing on one image with a layer gone: "
        f"{economy['total']} registry requests with the prober's cache and single-flight, "
        f"{naive['total']} without"
    )


def storm(
    regs: object, image: str, workloads: int, *, economy: bool
) -> tuple[str, str, dict[str, int]]:
    hosts = {r.host for r in regs.all()}  # type: ignore[attr-defined]
    cfg = ClientConfig(
        insecure_hosts=frozenset(hosts),
        address_policy=AddressPolicy(("127.0.0.0/8",)),
        cache_auth=economy,
        content_cache_bytes=ClientConfig.content_cache_bytes if economy else 0,
        per_host_rate=10_000.0,
        per_host_burst=10_000,
        per_host_concurrency=64,
    )
    counting = CountingTransport(guarded_transport(cfg.address_policy))

    async def diagnose_all() -> set[str]:
        prober = Prober(
            cfg,
            transport=counting,
            prober_config=ProberConfig(cache=economy, single_flight=economy),
        )
        results = await asyncio.gather(
            *(
                prober.diagnose(
                    image, Keyring(), Platform.parse("linux/amd64"), distrust_available=True
                )
                for _ in range(workloads)
            )
        )
        await prober.aclose()
        return {str(d.cause) for d in results}

    causes = asyncio.run(diagnose_all())
    assert causes == {str(Cause.ImageIncomplete)}, causes
    name = "cache + single-flight" if economy else "naive (no cache, no flight)"
    return name, ",".join(sorted(causes)), dict(counting.counts)


if __name__ == "__main__":
    raise SystemExit(main())
