"""The node's path, hop by hop: hosts.toml mirrors then the server, and pull-through caches."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from pullmedic.app import nodecreds
from pullmedic.core.diagnosis import Cause, Diagnosis, Evidence, Fix
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.pullpath import (
    CacheMapping,
    Hop,
    conclude_cache,
    conclude_mirrors,
    find_mapping,
    parse_cache_mapping,
)
from pullmedic.core.registryhosts import Endpoint, parse_hosts_toml, pull_path
from pullmedic.probe.hosts import load_paths
from pullmedic.probe.pullpath import PathDiagnoser

IMG = "r.example/team/app:1.0"


def _d(cause: Cause, status: int | None = None, image: str = IMG, **kw: Any) -> Diagnosis:
    ev = (Evidence("manifest", "HEAD", "https://x/v2/team/app/manifests/1.0", status),)
    return Diagnosis(image, cause, "high", f"{cause} says so.", ev if status else (), **kw)


OK = _d(Cause.ImageAvailable, 200)
MISSING = _d(Cause.TagNotFound, 404)
DOWN = _d(Cause.RegistryUnreachable)


def test_first_hop_answering_is_the_answer() -> None:
    assert conclude_mirrors([Hop("mirror", "http://m:1", OK)]) is OK


def test_fallback_to_server_names_the_failed_mirror() -> None:
    d = conclude_mirrors([Hop("mirror", "http://m:1", DOWN), Hop("server", "https://r", OK)])
    assert d.cause is Cause.ImageAvailable
    assert d.details["hop"] == "mirror" and d.details["hopEndpoint"] == "http://m:1"
    assert "after mirror http://m:1 (RegistryUnreachable) failed" in d.summary
    assert [e.kind for e in d.evidence][-2:] == ["hop", "hop"]
    assert d.evidence[-1].status == 200 and "server: answered 200" in d.evidence[-1].note


def test_every_hop_failing_the_server_is_the_authority() -> None:
    d = conclude_mirrors([Hop("mirror", "http://m:1", DOWN), Hop("server", "https://r", MISSING)])
    assert d.cause is Cause.TagNotFound
    assert d.details["hop"] == "server"
    assert d.details["hops"] == [
        "mirror http://m:1: RegistryUnreachable",
        "server https://r: TagNotFound",
    ]
    assert "at server https://r, the last hop, after mirror http://m:1" in d.summary
    with pytest.raises(ValueError):
        conclude_mirrors([])


CACHE = "cache.example/hub/team/app:1.0"
UP = "upstream.example/team/app:1.0"


def test_cache_404_upstream_has_it_blames_the_cache() -> None:
    c = _d(Cause.RepositoryNotFound, 404, CACHE)
    d = conclude_cache(Hop("cache", CACHE, c), Hop("upstream", UP, _d(Cause.ImageAvailable, 200)))
    assert d.cause is Cause.RegistryUnreachable and d.fix is None
    assert d.details["hop"] == "cache"
    assert "the cache cannot fetch it" in d.summary and "upstream credentials" in d.summary


def test_neither_has_the_tag_keeps_the_cache_fix() -> None:
    fix = Fix("tag", "nearest", image="cache.example/hub/team/app:1.1", digest="sha256:1")
    c = _d(Cause.TagNotFound, 404, CACHE, fix=fix)
    d = conclude_cache(Hop("cache", CACHE, c), Hop("upstream", UP, _d(Cause.TagNotFound, 404, UP)))
    assert d.cause is Cause.TagNotFound and d.fix == fix and d.image == CACHE
    assert d.details["hop"] == "upstream"
    assert "Neither the cache nor its upstream has it" in d.summary
    assert "Verified through the cache: use image cache.example/hub/team/app:1.1" in d.summary


def test_cache_404_upstream_down() -> None:
    c = _d(Cause.TagNotFound, 404, CACHE)
    d = conclude_cache(Hop("cache", CACHE, c), Hop("upstream", UP, _d(Cause.RegistryUnreachable)))
    assert d.cause is Cause.RegistryUnreachable and d.image == CACHE
    assert d.details["hop"] == "upstream"


def test_cache_404_upstream_needs_credentials_we_lack() -> None:
    c = _d(Cause.TagNotFound, 404, CACHE)
    u = _d(Cause.AuthenticationRequired, 401, UP)
    d = conclude_cache(Hop("cache", CACHE, c), Hop("upstream", UP, u))
    assert d.cause is Cause.Unknown and d.details["hop"] == "cache"


def test_cache_answering_is_its_own_answer() -> None:
    alone = conclude_cache(Hop("cache", CACHE, OK), None)
    assert alone.cause is Cause.ImageAvailable and alone.details["hop"] == "cache"
    assert alone.summary.endswith("Answered by the cache.")
    d = conclude_cache(Hop("cache", CACHE, OK), Hop("upstream", UP, MISSING))
    assert d.cause is Cause.ImageAvailable


def test_mappings() -> None:
    m = parse_cache_mapping("cache.example/hub/=docker.io")
    assert m == CacheMapping("cache.example/hub", "docker.io")
    assert m.upstream_image("cache.example/hub/library/nginx:1") == "docker.io/library/nginx:1"
    assert m.upstream_image("cache.example/other/nginx:1") is None
    assert m.cache_image("docker.io/library/nginx:1") == "cache.example/hub/library/nginx:1"
    whole = parse_cache_mapping("cache.example=quay.io")
    assert find_mapping([whole, m], "cache.example/hub/x:1") is m
    assert find_mapping([whole, m], "cache.example/q/x:1") is whole
    for bad in ("cache.example", "=docker.io", "a=a", "http://c=d", "c d=e"):
        with pytest.raises(ValueError):
            parse_cache_mapping(bad)


def test_pull_path_falls_back_to_the_upstream() -> None:
    mirrors = parse_hosts_toml("docker.io", '[host."http://m:1"]\n')
    assert pull_path("docker.io", mirrors) == [
        Endpoint("http", "m:1"),
        Endpoint("https", "registry-1.docker.io"),
    ]
    assert pull_path("docker.io", mirrors)[-1].server
    same = parse_hosts_toml("r", 'server = "http://m:1"\n[host."http://m:1"]\n')
    assert pull_path("r", same) == [Endpoint("http", "m:1")]


def test_load_paths(tmp_path: Path) -> None:
    d = tmp_path / "r.example"
    d.mkdir()
    (d / "hosts.toml").write_text('server = "https://r.example"\n[host."http://m:1"]\n')
    assert load_paths(tmp_path) == {
        "r.example": (Endpoint("http", "m:1"), Endpoint("https", "r.example"))
    }


class _Fake:
    def __init__(self, answers: dict[str, Diagnosis]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def diagnose(self, image: str, keyring: Keyring, platform: Platform, **kw: Any) -> Any:
        self.asked.append(image)
        return self.answers[image]


async def test_path_diagnoser_walks_the_hosts_toml() -> None:
    first = _Fake({IMG: DOWN})
    server = _Fake({IMG: OK})
    path = {"r.example": (Endpoint("http", "m:1"), Endpoint("https", "r.example", True))}
    probers = {"m:1": first, "r.example": server}
    diag = PathDiagnoser(first, path, lambda host, ep: probers[ep.netloc])
    d = await diag.diagnose(IMG, Keyring(), Platform("linux", "amd64"))
    assert d.cause is Cause.ImageAvailable and d.details["hop"] == "mirror"
    assert server.asked == [IMG] and first.asked == [IMG]


async def test_path_diagnoser_asks_the_upstream_of_a_cache() -> None:
    inner = _Fake({CACHE: _d(Cause.TagNotFound, 404, CACHE), UP: OK})
    m = CacheMapping("cache.example/hub", "upstream.example")
    d = await PathDiagnoser(inner, caches=[m]).diagnose(
        CACHE, Keyring(), Platform("linux", "amd64")
    )
    assert inner.asked == [CACHE, UP]
    assert d.cause is Cause.RegistryUnreachable and d.details["hop"] == "cache"


def test_flag(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    nodecreds.add_arguments(p)
    s = nodecreds.settings_from(p.parse_args(["--pull-through-cache", "c.example/hub=docker.io"]))
    assert s.caches == (CacheMapping("c.example/hub", "docker.io"),)
    with pytest.raises(ValueError, match="--pull-through-cache"):
        nodecreds.settings_from(p.parse_args(["--pull-through-cache", "nonsense"]))


@pytest.mark.parametrize("argv", [["diagnose", "r.example/a:1"], ["explain", "pod/x"], ["run"]])
def test_every_entry_point_takes_the_cache_flag(argv: list[str]) -> None:
    from pullmedic.app.cli import build_parser

    flags = ["--pull-through-cache", "c.example/hub=docker.io", "--pull-through-cache", "q=quay.io"]
    args = build_parser().parse_args([*argv, *flags])
    assert args.pull_through_cache == ["c.example/hub=docker.io", "q=quay.io"]


def test_run_reads_the_cache_flag_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pullmedic.app.cli import build_parser

    monkeypatch.setenv("PULLMEDIC_PULL_THROUGH_CACHES", "c.example/hub=docker.io,q=quay.io")
    s = nodecreds.settings_from(build_parser().parse_args(["run"]))
    assert s.caches == (CacheMapping("c.example/hub", "docker.io"), CacheMapping("q", "quay.io"))
