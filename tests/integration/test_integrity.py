""" "Pullable" means what the kubelet needs, not just a manifest: against real registries
whose blobs or child manifests were removed, the prober names the missing piece."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.request_kinds import CountingTransport
from pullmedic.core.diagnosis import Cause
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.integrity import IntegrityKey
from pullmedic.probe.netguard import AddressPolicy, guarded_transport
from pullmedic.probe.prober import Prober
from sandbox.damage import delete_blob, delete_manifest, manifest
from sandbox.images import push_image
from sandbox.registries import RegistrySet, start_registries

pytestmark = pytest.mark.cluster

AMD64 = Platform.parse("linux/amd64")
EMPTY = Keyring.from_secrets([])[0]


@pytest.fixture(scope="module")
def regs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistrySet]:
    r = start_registries(tmp_path_factory.mktemp("integrity-registries"))
    try:
        yield r
    finally:
        r.stop()


def prober(regs: RegistrySet) -> tuple[Prober, CountingTransport]:
    token_host = regs.token_url.split("/")[2]
    config = ClientConfig(
        insecure_hosts=frozenset({r.host for r in regs.all()} | {token_host}),
        address_policy=AddressPolicy(("127.0.0.0/8",)),
    )
    counting = CountingTransport(guarded_transport(config.address_policy))
    return Prober(config, transport=counting), counting


async def test_a_whole_image_is_available_with_high_confidence(regs: RegistrySet) -> None:
    push_image(regs.open, "whole/app", "1.0")
    p, _ = prober(regs)
    d = await p.diagnose(f"{regs.open.host}/whole/app:1.0", EMPTY, AMD64)
    assert d.cause is Cause.ImageAvailable and d.confidence == "high", d.summary
    await p.aclose()


@pytest.mark.parametrize("which", ["config", "last layer"])
async def test_a_missing_blob_is_image_incomplete(regs: RegistrySet, which: str) -> None:
    repo = f"broken/{which.replace(' ', '-')}"
    push_image(regs.open, repo, "1.0")
    doc = manifest(regs.open, repo, "1.0")
    gone = doc["config"]["digest"] if which == "config" else doc["layers"][-1]["digest"]
    delete_blob(regs.open, repo, gone)
    p, _ = prober(regs)
    d = await p.diagnose(f"{regs.open.host}/{repo}:1.0", EMPTY, AMD64)
    assert d.cause is Cause.ImageIncomplete, d.summary
    assert gone in d.summary and gone in str(d.details["missing"])
    await p.aclose()


async def test_the_platforms_child_manifest_missing_is_image_incomplete(
    regs: RegistrySet,
) -> None:
    push_image(
        regs.open, "broken/multi", "2.0", platforms=("linux/arm64", "linux/amd64"), index="oci"
    )
    index = manifest(regs.open, "broken/multi", "2.0")
    amd64 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    arm64 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    delete_manifest(regs.open, "broken/multi", amd64["digest"])
    p, _ = prober(regs)
    ref = f"{regs.open.host}/broken/multi:2.0"
    d = await p.diagnose(ref, EMPTY, AMD64)
    assert d.cause is Cause.ImageIncomplete and amd64["digest"] in d.summary
    # The other platform's child is intact: an arm64 node pulls it.
    d_arm = await p.diagnose(ref, EMPTY, Platform.parse("linux/arm64"))
    assert d_arm.cause is Cause.ImageAvailable, d_arm.summary
    assert arm64["digest"] not in d.summary
    await p.aclose()


async def test_a_storm_verifies_blobs_once(regs: RegistrySet) -> None:
    """Twenty groups failing on one image at once share one probe and one verification."""
    push_image(regs.open, "storm/app", "1.0")
    solo, solo_count = prober(regs)
    image = f"{regs.open.host}/storm/app:1.0"
    await solo.diagnose(image, EMPTY, AMD64)
    one = solo_count.counts["blob"]
    assert one >= 2  # the config and at least one layer
    p, counting = prober(regs)
    results = await asyncio.gather(*(p.diagnose(image, EMPTY, AMD64) for _ in range(20)))
    assert {d.cause for d in results} == {Cause.ImageAvailable}
    assert counting.counts["blob"] == one
    await p.aclose()
    await solo.aclose()


async def test_cached_verification_is_shared_by_diagnoses(regs: RegistrySet) -> None:
    push_image(regs.open, "shared/app", "1.0")
    p, counting = prober(regs)
    image = f"{regs.open.host}/shared/app:1.0"
    await p.diagnose(image, EMPTY, AMD64)
    before = counting.counts["blob"]
    # A new diagnosis (other pod, other policy) of the same image: only the verdict stays.
    p.cache.discard(lambda key, _value: not isinstance(key, IntegrityKey))
    await p.diagnose(image, EMPTY, AMD64)
    assert counting.counts["blob"] - before == 1  # a HEAD for the kept config; no layer HEADs
    await p.aclose()


async def test_a_failed_pull_re_verifies_the_blobs(regs: RegistrySet) -> None:
    """The kubelet failing after a cached "pullable" means something changed: a blob
    removed since is found, not hidden by the cache."""
    push_image(regs.open, "gc/app", "1.0")
    p, _ = prober(regs)
    image = f"{regs.open.host}/gc/app:1.0"
    assert (await p.diagnose(image, EMPTY, AMD64)).cause is Cause.ImageAvailable
    doc = manifest(regs.open, "gc/app", "1.0")
    delete_blob(regs.open, "gc/app", doc["layers"][0]["digest"])
    d = await p.diagnose(image, EMPTY, AMD64, distrust_available=True)
    assert d.cause is Cause.ImageIncomplete, d.summary
    await p.aclose()
