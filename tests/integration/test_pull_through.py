"""Pull-through caches, for real: distribution in proxy mode in front of the sandbox's
registries, probed by the real prober (registries only, no node).

The cache answers 404 for every upstream problem, so each case is told apart by asking
the upstream too (``--pull-through-cache``), and the cause names the hop that failed.
A fix offered is one that works through the cache: it is diagnosed again by the cache's
name and must be pullable there.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pullmedic.app import nodecreds
from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.core.dockerconfig import PullSecret
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.pullpath import CacheMapping
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.netguard import AddressPolicy
from pullmedic.probe.prober import Prober
from pullmedic.probe.pullpath import PathDiagnoser
from sandbox import procs
from sandbox.images import delete_tag, pull_whole, push_image
from sandbox.registries import (
    BASIC_USERS,
    Registry,
    RegistrySet,
    _start_one,
    start_pull_through,
    start_registries,
    write_hosts_toml,
)

pytestmark = pytest.mark.cluster

AMD64 = Platform.parse("linux/amd64")
LOOPBACK = AddressPolicy(("127.0.0.0/8",))
USER, PASSWORD = next(iter(BASIC_USERS.items()))


@dataclass
class World:
    regs: RegistrySet
    cache: Registry  # in front of the Basic registry, with the right credentials
    broken: Registry  # in front of the Basic registry, with a wrong password
    down_upstream: Registry  # an open registry stopped mid-module
    down_cache: Registry  # an anonymous cache in front of it
    tmp: Path

    def all(self) -> list[Registry]:
        return [*self.regs.all(), self.cache, self.broken, self.down_upstream, self.down_cache]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pull-through")
    regs = start_registries(tmp)
    extra: list[Registry] = []
    try:
        for tag in ("1.0.0", "1.0.1", "1.0.2"):
            push_image(regs.basic, "team/web", tag)
        cache = start_pull_through(tmp, "cache", regs.basic, credentials=(USER, PASSWORD))
        extra.append(cache)
        broken = start_pull_through(tmp, "broken", regs.basic, credentials=(USER, "wrong"))
        extra.append(broken)
        up = _start_one("down-upstream", tmp, None, 100, None, {}, 30.0)
        extra.append(up)
        push_image(up, "lib/app", "1.0")
        push_image(up, "lib/app", "2.0")
        down = start_pull_through(tmp, "down-cache", up)
        extra.append(down)
        yield World(regs, cache, broken, up, down, tmp)
    finally:
        for r in extra:
            procs.stop(r.process)
        regs.stop()


def keyring_for(host: str) -> Keyring:
    """The pod's pull secret: credentials for the upstream (the cache itself is open)."""
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    cfg = json.dumps({"auths": {host: {"auth": auth}}}).encode()
    data = {".dockerconfigjson": base64.b64encode(cfg).decode()}
    kr, problems = Keyring.from_secrets(
        [PullSecret("ns", "upstream", "kubernetes.io/dockerconfigjson", data)]
    )
    assert not problems
    return kr


@pytest.fixture
async def diagnoser(world: World) -> AsyncIterator[PathDiagnoser]:
    config = ClientConfig(
        insecure_hosts=frozenset(r.host for r in world.all()), address_policy=LOOPBACK
    )
    caches = [
        CacheMapping(world.cache.host, world.regs.basic.host),
        CacheMapping(world.broken.host, world.regs.basic.host),
        CacheMapping(world.down_cache.host, world.down_upstream.host),
    ]
    d = PathDiagnoser(Prober(config), caches=caches)
    try:
        yield d
    finally:
        await d.aclose()


async def diagnose(d: PathDiagnoser, image: str, kr: Keyring) -> Diagnosis:
    return await d.diagnose(image, kr, AMD64)


def hop_notes(d: Diagnosis) -> list[str]:
    return [f"{e.url} {e.note}" for e in d.evidence if e.kind == "hop"]


async def assert_fix_works_through_cache(
    d: PathDiagnoser, diag: Diagnosis, cache: Registry, kr: Keyring
) -> None:
    assert diag.fix is not None and diag.fix.image is not None
    assert diag.fix.image.startswith(f"{cache.host}/"), diag.fix
    again = await diagnose(d, diag.fix.image, kr)
    assert again.cause is Cause.ImageAvailable, again.summary
    assert again.digest == diag.fix.digest


async def test_tag_missing_upstream(world: World, diagnoser: PathDiagnoser) -> None:
    kr = keyring_for(world.regs.basic.host)
    image = f"{world.cache.host}/team/web:1.0.9"
    d = await diagnose(diagnoser, image, kr)
    assert d.cause is Cause.TagNotFound, d.summary
    assert d.details["hop"] == "upstream"
    assert "Neither the cache nor its upstream has it" in d.summary
    notes = hop_notes(d)
    assert notes == [
        f"{image} cache: answered 404, TagNotFound",
        f"{world.regs.basic.host}/team/web:1.0.9 upstream: answered 404, TagNotFound",
    ]
    await assert_fix_works_through_cache(diagnoser, d, world.cache, kr)
    assert d.fix is not None and d.fix.image is not None and d.fix.image.endswith(":1.0.2")


async def test_cache_upstream_credentials_wrong(world: World, diagnoser: PathDiagnoser) -> None:
    kr = keyring_for(world.regs.basic.host)
    image = f"{world.broken.host}/team/web:1.0.1"
    d = await diagnose(diagnoser, image, kr)
    assert d.cause is Cause.RegistryUnreachable, d.summary
    assert d.details["hop"] == "cache" and d.details["hopEndpoint"] == image
    assert "the cache cannot fetch it" in d.summary
    notes = hop_notes(d)
    assert notes[0].startswith(f"{image} cache: answered 404")
    upstream = f"{world.regs.basic.host}/team/web:1.0.1"
    assert notes[1] == f"{upstream} upstream: answered 200, ImageAvailable"
    assert d.fix is None  # no other tag would help: the cache's credentials are the fix
    # the same image through the healthy cache is pullable: the broken hop is the cache
    ok = await diagnose(diagnoser, f"{world.cache.host}/team/web:1.0.1", kr)
    assert ok.cause is Cause.ImageAvailable, ok.summary


async def test_upstream_tag_deleted_while_cached(world: World, diagnoser: PathDiagnoser) -> None:
    kr = keyring_for(world.regs.basic.host)
    push_image(world.regs.basic, "team/web", "0.9.0")
    pull_whole(world.cache, "team/web", "0.9.0")
    delete_tag(world.regs.basic, "team/web", "0.9.0")
    image = f"{world.cache.host}/team/web:0.9.0"
    d = await diagnose(diagnoser, image, kr)
    # Measured: distribution's proxy keeps serving a tag it has pulled whole after the
    # upstream deleted it (the default ttl); the node pulls it, so it is available, and
    # the cache is the hop that answered. The upstream is not asked (no request spent).
    assert d.cause is Cause.ImageAvailable, d.summary
    assert d.details["hop"] == "cache"
    assert hop_notes(d) == [f"{image} cache: answered 200, ImageAvailable"]
    with httpx.Client(auth=(USER, PASSWORD)) as c:
        gone = c.head(f"{world.regs.basic.url}/v2/team/web/manifests/0.9.0")
    assert gone.status_code == 404  # the stale copy: upstream has deleted it
    # a tag the upstream has deleted and the cache never held: neither has it, and the
    # fix is verified through the cache
    push_image(world.regs.basic, "team/web", "1.0.5")
    delete_tag(world.regs.basic, "team/web", "1.0.5")
    missing = await diagnose(diagnoser, f"{world.cache.host}/team/web:1.0.5", kr)
    assert missing.cause is Cause.TagNotFound, missing.summary
    assert missing.details["hop"] == "upstream"
    await assert_fix_works_through_cache(diagnoser, missing, world.cache, kr)


async def test_upstream_down(world: World, diagnoser: PathDiagnoser) -> None:
    kr = Keyring()
    cache = world.down_cache
    pull_whole(cache, "lib/app", "1.0")
    procs.stop(world.down_upstream.process)
    world.down_upstream.process = None
    with httpx.Client() as c:
        assert c.get(f"{cache.url}/v2/").status_code == 200  # the cache itself is up
    held = await diagnose(diagnoser, f"{cache.host}/lib/app:1.0", kr)
    assert held.cause is Cause.ImageAvailable, held.summary  # served from what it holds
    image = f"{cache.host}/lib/app:2.0"
    d = await diagnose(diagnoser, image, kr)
    assert d.cause is Cause.RegistryUnreachable, d.summary
    assert d.details["hop"] == "upstream"
    assert d.details["hopEndpoint"] == f"{world.down_upstream.host}/lib/app:2.0"
    notes = hop_notes(d)
    assert notes[0].startswith(f"{image} cache: answered 404")
    assert notes[1].endswith("upstream: RegistryUnreachable")


# ---- the node's hosts.toml: mirrors in order, then the server ------------------------------


def node_diagnoser(world: World, mirrors: list[str]) -> Any:
    """What ``run --registry-config-dir`` builds, for a hosts.toml for the Basic registry."""
    certs_d = world.tmp / f"certs-{procs.free_port()}"
    write_hosts_toml(certs_d, world.regs.basic.host, mirrors, world.regs.basic.url)
    config = ClientConfig(
        insecure_hosts=frozenset(r.host for r in world.all()), address_policy=LOOPBACK
    )
    p = argparse.ArgumentParser()
    nodecreds.add_arguments(p)
    node = nodecreds.settings_from(p.parse_args(["--registry-config-dir", str(certs_d)]))
    return nodecreds.build_diagnoser(config, node)


async def test_hosts_toml_hop_by_hop(world: World) -> None:
    basic = world.regs.basic
    dead = f"http://127.0.0.1:{procs.free_port()}"
    diag = node_diagnoser(world, [dead, world.broken.url])
    kr = keyring_for(basic.host)
    try:
        # the mirrors fail (one unreachable, one a cache that cannot fetch), the server has it
        ok = await diag.diagnose(f"{basic.host}/team/web:1.0.1", kr, AMD64)
        assert ok.cause is Cause.ImageAvailable, ok.summary
        assert ok.details["hop"] == "mirror" and ok.details["hopEndpoint"] == dead
        assert ok.details["hops"] == [
            f"mirror {dead}: RegistryUnreachable",
            f"mirror {world.broken.url}: RepositoryNotFound",
            f"server {basic.url}: ImageAvailable",
        ]
        # every hop fails: the server is the authority, and its fix works (containerd
        # falls back to it after the mirrors)
        missing = await diag.diagnose(f"{basic.host}/team/web:1.0.9", kr, AMD64)
        assert missing.cause is Cause.TagNotFound, missing.summary
        assert missing.details["hop"] == "server"
        assert f"at server {basic.url}, the last hop" in missing.summary
        assert missing.fix is not None and missing.fix.image == f"{basic.host}/team/web:1.0.2"
        hops = [e for e in missing.evidence if e.kind == "hop"]
        assert [e.url for e in hops] == [dead, world.broken.url, basic.url]
        assert [e.status for e in hops] == [None, 404, 404]
    finally:
        await diag.aclose()
