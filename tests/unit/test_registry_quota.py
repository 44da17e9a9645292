"""Spend none of the nodes' pull quota: HEAD where it answers, a digest read once, and no
manifest GET while a registry's quota is down to the nodes' reserve.

Docker Hub counts manifest GETs as pulls (HEAD is free) and reports what is left in
``ratelimit-limit`` / ``ratelimit-remaining``; the registry here does the same, in process.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import httpx
import pytest

from pullmedic.core.diagnosis import Cause
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.prober import Prober
from pullmedic.probe.quota import QUOTA_NOTE, Quotas, parse_ratelimit
from pullmedic.telemetry import metrics

AMD64 = Platform.parse("linux/amd64")
HOST = "hub.example"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("100;w=21600", (100, 21600.0)),
        ("76;w=21600", (76, 21600.0)),
        ("100", (100, None)),
        (" 5 ; w=60 ; comment=x", (5, 60.0)),
        ("100;W=3600", (100, 3600.0)),
        ("100;w=soon", (100, None)),
        ("many;w=60", None),
        ("-1;w=60", None),
        ("", None),
        (None, None),
    ],
)
def test_ratelimit_headers_parse(value: str | None, parsed: tuple[int, float | None]) -> None:
    assert parse_ratelimit(value) == parsed


@pytest.mark.parametrize(
    ("headers", "reserve", "withheld"),
    [
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}, 0.2, False),
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "21;w=21600"}, 0.2, False),
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "20;w=21600"}, 0.2, True),
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"}, 0.0, True),
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "1;w=21600"}, 0.0, False),
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "50;w=21600"}, 0.5, True),
        ({"ratelimit-limit": "100;w=21600"}, 0.2, False),  # half the pair: not limited
        ({}, 0.2, False),  # no headers: not limited
    ],
)
def test_the_reserve(headers: dict[str, str], reserve: float, withheld: bool) -> None:
    quotas = Quotas(reserve)
    quotas.observe(HOST, headers)
    quota = quotas.get(HOST)
    assert (quota is not None and quota.reserved(reserve)) is withheld


def test_a_passed_window_forgets_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("pullmedic.probe.quota.time.monotonic", lambda: now[0])
    quotas = Quotas(0.2)
    quotas.observe(HOST, {"ratelimit-limit": "100;w=60", "ratelimit-remaining": "3;w=60"})
    assert quotas.get(HOST) is not None
    now[0] += 60
    assert quotas.get(HOST) is None


def _sha(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class Hub:
    """A Docker-Hub-like registry: every manifest answer carries the quota headers, and
    each manifest GET spends one pull."""

    def __init__(self, remaining: int, limit: int = 100) -> None:
        self.limit = limit
        self.remaining = remaining
        self.sent: Counter[tuple[str, str]] = Counter()  # (method, kind)
        self.docs: dict[str, tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}

    def push(self, repo: str, tag: str, platforms: list[str], *, index: bool) -> None:
        children: list[tuple[str, bytes]] = []
        for p in platforms:
            os_, arch = p.split("/")
            cfg = json.dumps({"os": os_, "architecture": arch}).encode()
            layer = f"{repo}:{tag}:{p}".encode()
            self.blobs[_sha(cfg)] = cfg
            self.blobs[_sha(layer)] = layer
            m = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST,
                    "config": {"digest": _sha(cfg), "size": len(cfg)},
                    "layers": [{"digest": _sha(layer), "size": len(layer)}],
                }
            ).encode()
            self.docs[f"{repo}@{_sha(m)}"] = (MANIFEST, m)
            children.append((p, m))
        if not index:
            self.docs[f"{repo}:{tag}"] = (MANIFEST, children[0][1])
            return
        doc = {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": MANIFEST,
                    "digest": _sha(m),
                    "size": len(m),
                    "platform": dict(zip(("os", "architecture"), p.split("/"), strict=True)),
                }
                for p, m in children
            ],
        }
        body = json.dumps(doc).encode()
        self.docs[f"{repo}:{tag}"] = self.docs[f"{repo}@{_sha(body)}"] = (INDEX, body)

    def manifest_gets(self) -> int:
        return self.sent[("GET", "manifest")]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/":
            self.sent[(request.method, "ping")] += 1
            return httpx.Response(200)
        if "/blobs/" in path:
            self.sent[(request.method, "blob")] += 1
            blob = self.blobs.get(path.rpartition("/")[2])
            if blob is None:
                return httpx.Response(404)
            headers = {"content-length": str(len(blob))}
            return httpx.Response(
                200, headers=headers, content=b"" if request.method == "HEAD" else blob
            )
        if path.endswith("/tags/list"):
            self.sent[("GET", "tags")] += 1
            repo = path[4 : -len("/tags/list")]
            tags = sorted(k.split(":", 1)[1] for k in self.docs if k.startswith(f"{repo}:"))
            return httpx.Response(200, json={"name": repo, "tags": tags})
        self.sent[(request.method, "manifest")] += 1
        if request.method == "GET" and self.remaining > 0:
            self.remaining -= 1
        headers = {
            "ratelimit-limit": f"{self.limit};w=21600",
            "ratelimit-remaining": f"{self.remaining};w=21600",
        }
        repo, _, ref = path[4:].partition("/manifests/")
        found = self.docs.get(f"{repo}@{ref}" if ref.startswith("sha256:") else f"{repo}:{ref}")
        if found is None:
            return httpx.Response(
                404, headers=headers, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]}
            )
        media, body = found
        headers |= {"content-type": media, "docker-content-digest": _sha(body)}
        return httpx.Response(
            200, headers=headers, content=b"" if request.method == "HEAD" else body
        )


def _prober(hub: Hub, reserve: float = 0.2) -> Prober:
    config = ClientConfig(quota_reserve=reserve)
    return Prober(config, transport=httpx.MockTransport(hub))


def _hub() -> Hub:
    hub = Hub(remaining=90)
    hub.push("app/single", "1.0", ["linux/amd64"], index=False)
    hub.push("app/multi", "2.0", ["linux/amd64", "linux/arm64"], index=True)
    return hub


@pytest.mark.parametrize(("image", "first_gets"), [("app/single:1.0", 1), ("app/multi:2.0", 2)])
async def test_a_second_diagnosis_of_the_same_image_costs_no_manifest_get(
    image: str, first_gets: int
) -> None:
    hub = _hub()
    async with _prober(hub) as prober:
        first = await prober.diagnose(f"{HOST}/{image}", Keyring(), AMD64)
        assert first.cause is Cause.ImageAvailable and first.confidence == "high"
        assert hub.manifest_gets() == first_gets  # the index and its amd64 child, or one
        prober.clear_cache()  # every diagnosis, probe and verdict expired: bodies stay
        again = await prober.diagnose(f"{HOST}/{image}", Keyring(), AMD64)
    assert again.cause is Cause.ImageAvailable and again.confidence == "high"
    assert hub.manifest_gets() == first_gets
    assert hub.sent[("HEAD", "manifest")] >= 2  # the tag is asked again, for free
    notes = [e.note for e in again.evidence if e.kind == "manifest" and e.method == "GET"]
    assert notes and all(n == "not sent: read before by digest" for n in notes)


async def test_at_the_reserve_no_manifest_get_is_sent_and_the_diagnosis_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh host label cap: earlier tests in this process may have used up the shared one.
    monkeypatch.setattr(metrics, "host_label", metrics.HostLabels())
    hub = _hub()
    hub.remaining = 20  # limit 100, reserve one fifth: the last 20 pulls are the nodes'
    withheld = metrics.REGISTRY_GETS_WITHHELD.labels(host=HOST)
    before = withheld._value.get()
    async with _prober(hub) as prober:
        d = await prober.diagnose(f"{HOST}/app/multi:2.0", Keyring(), AMD64)
    assert hub.manifest_gets() == 0 and hub.remaining == 20
    assert hub.sent[("HEAD", "manifest")] == 1  # existence and digest are still checked
    assert d.cause is Cause.ImageAvailable and d.confidence == "medium"
    assert QUOTA_NOTE in d.summary and QUOTA_NOTE in str(d.details["quotaReserved"])
    unsent = [e for e in d.evidence if e.method == "GET" and e.status is None]
    assert [QUOTA_NOTE in e.note for e in unsent] == [True]
    assert withheld._value.get() == before + 1
    gauge = metrics.REGISTRY_QUOTA_REMAINING.labels(host=HOST)._value.get()
    assert gauge == 20


async def test_above_the_reserve_gets_are_sent() -> None:
    hub = _hub()
    hub.remaining = 22  # two pulls above the reserve: the index and its child
    async with _prober(hub) as prober:
        d = await prober.diagnose(f"{HOST}/app/multi:2.0", Keyring(), AMD64)
    assert hub.manifest_gets() == 2 and hub.remaining == 20
    assert d.confidence == "high" and "quotaReserved" not in d.details


@pytest.mark.parametrize(
    ("image", "cause"),
    [
        ("app/single:1.0", Cause.ImageAvailable),
        ("app/multi:2.0", Cause.ImageAvailable),
        ("app/single:9.9", Cause.TagNotFound),
        ("app/single@sha256:" + "0" * 64, Cause.DigestNotFound),
    ],
)
async def test_existence_is_checked_with_head(image: str, cause: Cause) -> None:
    hub = _hub()
    async with _prober(hub) as prober:
        d = await prober.diagnose(f"{HOST}/{image}", Keyring(), AMD64)
        by_method = prober.client.sender.requests
    assert d.cause is cause
    manifest = [(e.method, e.url.rpartition("/")[2]) for e in d.evidence if e.kind == "manifest"]
    ref = image.split("@")[1] if "@" in image else image.split(":")[1]
    assert manifest[0] == ("HEAD", ref)  # the first question about the reference is a HEAD
    assert ("GET", ref) not in manifest  # and its answer is never read again by name
    assert by_method[(HOST, "HEAD")] == hub.sent[("HEAD", "manifest")] + hub.sent[("HEAD", "blob")]
    assert by_method[(HOST, "GET")] == sum(n for (m, _), n in hub.sent.items() if m == "GET")
    if cause is not Cause.ImageAvailable:
        assert hub.manifest_gets() == 0
