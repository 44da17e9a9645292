"""Pull quota: what pullmedic's probes cost in a registry's pull quota (manifest GETs).

Not a test. Starts the sandbox registries, pushes three image shapes (one manifest, an OCI
index over two platforms, a tag typo with a nearby tag), and diagnoses each twice: a first
look, and a re-check of the same image after the diagnosis cache expired (what the audit
does every period and the admission webhook for every new pod of a known image). The same
work runs with pullmedic's defaults and with the content-addressed cache off (the baseline:
every re-check reads the manifests again). Requests are counted per method at the HTTP
transport, so the numbers are what the registry received.

Docker Hub counts a pull as up to two GETs of manifest URLs (HEAD is free), so "pulls at
most" is the number of manifest GETs; a cluster's nodes usually share that quota.

    .venv/bin/python -m bench quota     # prints the table, writes bench/results/quota.json
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from bench.common import table  # noqa: E402
from bench.request_kinds import CountingTransport  # noqa: E402
from pullmedic.core.keyring import Keyring  # noqa: E402
from pullmedic.core.platforms import Platform  # noqa: E402
from pullmedic.probe.config import ClientConfig  # noqa: E402
from pullmedic.probe.netguard import AddressPolicy, guarded_transport  # noqa: E402
from pullmedic.probe.prober import Prober, ProberConfig  # noqa: E402
from sandbox.images import push_image  # noqa: E402
from sandbox.registries import start_registries  # noqa: E402

AMD64 = Platform.parse("linux/amd64")
SHAPES = (
    ("one manifest", "app/single:1.0.0"),
    ("index, two platforms", "app/multi:2.0.0"),
    ("tag typo (nearby tag verified)", "app/single:1.0.9"),
)
STEPS = ("first look", "re-check")


async def _measure(host: str, content_cache: bool) -> list[dict[str, Any]]:
    config = ClientConfig(
        insecure_hosts=frozenset({host}),
        address_policy=AddressPolicy(("127.0.0.0/8",)),
        content_cache_bytes=ClientConfig.content_cache_bytes if content_cache else 0,
    )
    # The diagnosis cache expires at once: the re-check probes again, as the audit does
    # one period later.
    pconfig = ProberConfig(ok_ttl=0.0, failure_ttl=0.0)
    rows = []
    for shape, ref in SHAPES:
        counting = CountingTransport(guarded_transport(config.address_policy))
        async with Prober(config, prober_config=pconfig, transport=counting) as prober:
            for step in STEPS:
                before = dict(counting.counts)
                d = await prober.diagnose(f"{host}/{ref}", Keyring(), AMD64)
                delta = {k: counting.counts[k] - before.get(k, 0) for k in counting.counts}
                rows.append(
                    {
                        "shape": shape,
                        "step": step,
                        "cause": str(d.cause),
                        "manifest_get": delta.get("manifest_get", 0),
                        "manifest_head": delta.get("manifest_head", 0),
                        "other": sum(
                            v
                            for k, v in delta.items()
                            if k not in ("manifest_get", "manifest_head")
                        ),
                    }
                )
    return rows


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pullmedic-quota-") as tmp:
        regs = start_registries(Path(tmp))
        try:
            push_image(regs.open, "app/single", "1.0.0")
            push_image(regs.open, "app/single", "1.0.1")
            push_image(
                regs.open,
                "app/multi",
                "2.0.0",
                platforms=("linux/amd64", "linux/arm64"),
                index="oci",
            )
            pullmedic = asyncio.run(_measure(regs.open.host, content_cache=True))
            baseline = asyncio.run(_measure(regs.open.host, content_cache=False))
        finally:
            regs.stop()
    return {"pullmedic": pullmedic, "baseline": baseline}


def run(quick: bool = False) -> dict[str, Any]:
    return measure()


def render(r: dict[str, Any]) -> str:
    rows = []
    for ours, base in zip(r["pullmedic"], r["baseline"], strict=True):
        rows.append(
            [
                ours["shape"],
                ours["step"],
                ours["cause"],
                ours["manifest_head"],
                ours["manifest_get"],
                base["manifest_get"],
            ]
        )
    return table(
        "Manifest requests per diagnosis (Docker Hub counts GETs, not HEADs)",
        [
            "image",
            "diagnosis",
            "cause",
            "HEADs (free)",
            "GETs: pullmedic",
            "GETs: content cache off",
        ],
        rows,
    )


def headline(r: dict[str, Any]) -> str:
    rechecks = [x for x in r["pullmedic"] if x["step"] == "re-check"]
    base = [x for x in r["baseline"] if x["step"] == "re-check"]
    first = [x for x in r["pullmedic"] if x["step"] == "first look"]
    return (
        f"a re-check of a known image (audit, admission) costs "
        f"{max(x['manifest_get'] for x in rechecks)} manifest GETs in a registry's pull "
        f"quota, against up to {max(x['manifest_get'] for x in base)} with the content cache "
        f"off; a first look costs at most {max(x['manifest_get'] for x in first)}"
    )


def main() -> int:
    r = measure()
    print(render(r))
    print(headline(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
