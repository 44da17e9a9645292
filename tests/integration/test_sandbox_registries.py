"""The sandbox registries behave like the real-world registries the prober meets.

Raw httpx on purpose: these tests pin down the sandbox itself (auth flows, manifest types,
pagination, faults), independent of pullmedic's own registry client.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from sandbox.faultproxy import FaultProxy
from sandbox.images import (
    ACCEPT_ALL,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    delete_tag,
    list_tags,
    parse_challenge,
    push_image,
)
from sandbox.registries import Registry, RegistrySet, start_registries

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def regs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistrySet]:
    rs = start_registries(tmp_path_factory.mktemp("registries"))
    try:
        yield rs
    finally:
        rs.stop()


def token(rs: RegistrySet, scope: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    return httpx.get(
        rs.token_url, params={"service": "sandbox-registry", "scope": scope}, auth=auth
    )


def get_manifest(
    reg: Registry, repo: str, ref: str, bearer: str | None = None, **kw: object
) -> httpx.Response:
    headers = {"Accept": ACCEPT_ALL}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx.get(f"{reg.url}/v2/{repo}/manifests/{ref}", headers=headers, **kw)  # type: ignore[arg-type]


# --- open / basic ----------------------------------------------------------------------


def test_open_registry_pull(regs: RegistrySet) -> None:
    digest = push_image(regs.open, "library/hello", "1.0")
    r = get_manifest(regs.open, "library/hello", "1.0")
    assert r.status_code == 200
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["content-type"] == OCI_MANIFEST
    man = r.json()
    cfg = httpx.get(f"{regs.open.url}/v2/library/hello/blobs/{man['config']['digest']}")
    assert cfg.status_code == 200
    assert cfg.json()["os"] == "linux" and cfg.json()["architecture"] == "amd64"
    layer = httpx.get(f"{regs.open.url}/v2/library/hello/blobs/{man['layers'][0]['digest']}")
    assert layer.status_code == 200 and layer.content[:2] == b"\x1f\x8b"  # gzip


def test_chunked_upload_and_docker_single_manifest(regs: RegistrySet) -> None:
    digest = push_image(
        regs.mirror,
        "chunky",
        "v1",
        platforms=["linux/arm/v7"],
        manifest_format="docker",
        size=200_000,
        chunk_size=50_000,
    )
    r = get_manifest(regs.mirror, "chunky", "v1")
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest
    assert r.headers["content-type"] == DOCKER_MANIFEST
    cfg_digest = r.json()["config"]["digest"]
    cfg = httpx.get(f"{regs.mirror.url}/v2/chunky/blobs/{cfg_digest}").json()
    assert (cfg["architecture"], cfg["variant"]) == ("arm", "v7")


def test_basic_registry_requires_credentials(regs: RegistrySet) -> None:
    push_image(regs.basic, "team/app", "1.0")
    url = f"{regs.basic.url}/v2/team/app/manifests/1.0"
    r = httpx.get(url, headers={"Accept": ACCEPT_ALL})
    assert r.status_code == 401
    assert parse_challenge(r.headers["www-authenticate"])[0] == "basic"
    assert httpx.get(url, headers={"Accept": ACCEPT_ALL}, auth=("alice", "nope")).status_code == 401
    ok = httpx.get(url, headers={"Accept": ACCEPT_ALL}, auth=("alice", "alice-secret"))
    assert ok.status_code == 200
    assert regs.basic.users == {"alice": "alice-secret"}


# --- bearer ----------------------------------------------------------------------------


def test_bearer_challenge_names_realm_and_service(regs: RegistrySet) -> None:
    r = httpx.get(f"{regs.bearer.url}/v2/public/x/manifests/latest")
    assert r.status_code == 401
    scheme, params = parse_challenge(r.headers["www-authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == regs.token_url
    assert params["service"] == "sandbox-registry"
    assert params["scope"] == "repository:public/x:pull"


def test_bearer_anonymous_pulls_public(regs: RegistrySet) -> None:
    digest = push_image(regs.bearer, "public/web", "1.0")
    tr = token(regs, "repository:public/web:pull")
    assert tr.status_code == 200
    body = tr.json()
    assert body["token"] == body["access_token"] and body["expires_in"] > 0
    r = get_manifest(regs.bearer, "public/web", "1.0", bearer=body["token"])
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest


def test_bearer_anonymous_private_is_insufficient_scope(regs: RegistrySet) -> None:
    push_image(regs.bearer, "private/db", "1.0")
    tr = token(regs, "repository:private/db:pull")
    assert tr.status_code == 200  # a token, just with no access: not an error
    r = get_manifest(regs.bearer, "private/db", "1.0", bearer=tr.json()["token"])
    assert r.status_code == 401
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # A repository that does not exist looks exactly the same (existence is not disclosed).
    tr2 = token(regs, "repository:private/nope:pull")
    r2 = get_manifest(regs.bearer, "private/nope", "1.0", bearer=tr2.json()["token"])
    assert r2.status_code == 401 and 'error="insufficient_scope"' in r2.headers["www-authenticate"]


def test_bearer_bob_pulls_private(regs: RegistrySet) -> None:
    digest = push_image(regs.bearer, "private/api", "2.0")
    tr = token(regs, "repository:private/api:pull", auth=("bob", "bob-secret"))
    assert tr.status_code == 200
    r = get_manifest(regs.bearer, "private/api", "2.0", bearer=tr.json()["token"])
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest
    # Bob cannot push: the token silently lacks push.
    tr2 = token(regs, "repository:private/api:pull,push", auth=("bob", "bob-secret"))
    up = httpx.post(
        f"{regs.bearer.url}/v2/private/api/blobs/uploads/",
        headers={"Authorization": f"Bearer {tr2.json()['token']}"},
    )
    assert up.status_code == 401 and "insufficient_scope" in up.headers["www-authenticate"]


def test_bearer_missing_tag_with_pull_token_is_manifest_unknown(regs: RegistrySet) -> None:
    push_image(regs.bearer, "private/api2", "1.0")
    tr = token(regs, "repository:private/api2:pull", auth=("bob", "bob-secret"))
    r = get_manifest(regs.bearer, "private/api2", "nope", bearer=tr.json()["token"])
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_token_server_wrong_password_is_401(regs: RegistrySet) -> None:
    assert token(regs, "repository:private/db:pull", auth=("bob", "wrong")).status_code == 401
    assert token(regs, "repository:private/db:pull", auth=("mallory", "x")).status_code == 401
    oauth = httpx.post(
        regs.token_url,
        data={
            "grant_type": "password",
            "username": "bob",
            "password": "wrong",
            "service": "sandbox-registry",
            "client_id": "pullmedic",
            "scope": "repository:private/db:pull",
        },
    )
    assert oauth.status_code == 401


def test_token_server_oauth_post_and_counters(regs: RegistrySet) -> None:
    ts = regs.token_server
    assert ts is not None
    before = ts.request_count
    push_image(regs.bearer, "private/oauth", "1.0")
    r = httpx.post(
        regs.token_url,
        data={
            "grant_type": "password",
            "username": "bob",
            "password": "bob-secret",
            "service": "sandbox-registry",
            "client_id": "pullmedic",
            "scope": "repository:private/oauth:pull",
        },
    )
    assert r.status_code == 200
    m = get_manifest(regs.bearer, "private/oauth", "1.0", bearer=r.json()["access_token"])
    assert m.status_code == 200
    assert ts.request_count > before
    assert ts.issued[-1].account == "bob"
    assert ts.issued[-1].granted == [
        {"type": "repository", "name": "private/oauth", "actions": ["pull"]}
    ]


# --- multi-platform --------------------------------------------------------------------


def test_oci_index_with_platforms_and_attestation(regs: RegistrySet) -> None:
    plats = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
    digest = push_image(
        regs.open, "multi/oci", "1.0", platforms=plats, index="oci", attestation=True
    )
    r = get_manifest(regs.open, "multi/oci", "1.0")
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest
    assert r.headers["content-type"] == OCI_INDEX
    entries = r.json()["manifests"]
    images = [e for e in entries if e["platform"]["os"] != "unknown"]
    atts = [e for e in entries if e["platform"]["os"] == "unknown"]
    got = {
        "/".join(filter(None, [p["os"], p["architecture"], p.get("variant")]))
        for p in (e["platform"] for e in images)
    }
    assert got == set(plats)
    assert len(atts) == 3
    assert all(
        a["annotations"]["vnd.docker.reference.type"] == "attestation-manifest" for a in atts
    )
    for e in entries:  # every child is really there
        child = get_manifest(regs.open, "multi/oci", e["digest"])
        assert child.status_code == 200 and child.headers["content-type"] == OCI_MANIFEST
    # distribution v3.1.2 parses an OCI index as ocischema.DeserializedImageIndex, which its
    # Accept check (written for manifestlist) misses: the index comes back anyway, so a
    # client must look at Content-Type, not assume it got what it asked for.
    narrow = httpx.get(
        f"{regs.open.url}/v2/multi/oci/manifests/1.0", headers={"Accept": OCI_MANIFEST}
    )
    assert narrow.status_code == 200 and narrow.headers["content-type"] == OCI_INDEX


def test_docker_manifest_list(regs: RegistrySet) -> None:
    digest = push_image(
        regs.basic, "multi/docker", "1.0", platforms=["linux/amd64", "linux/386"], index="docker"
    )
    r = get_manifest(regs.basic, "multi/docker", "1.0", auth=("alice", "alice-secret"))
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest
    assert r.headers["content-type"] == DOCKER_LIST
    entries = r.json()["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["amd64", "386"]
    assert {e["mediaType"] for e in entries} == {DOCKER_MANIFEST}
    # An old client (Accept: schema2 only) asking by tag gets the linux/amd64 child instead.
    old = httpx.get(
        f"{regs.basic.url}/v2/multi/docker/manifests/1.0",
        headers={"Accept": DOCKER_MANIFEST},
        auth=("alice", "alice-secret"),
    )
    assert old.status_code == 200 and old.headers["content-type"] == DOCKER_MANIFEST
    assert old.headers["docker-content-digest"] == entries[0]["digest"]


# --- delete / tags ---------------------------------------------------------------------


def test_delete_tag_makes_manifest_unknown(regs: RegistrySet) -> None:
    for reg in (regs.open, regs.bearer):
        repo = "public/gone" if reg is regs.bearer else "gone"
        digest = push_image(reg, repo, "1.0")
        delete_tag(reg, repo, "1.0")
        bearer = None
        if reg is regs.bearer:
            bearer = token(regs, f"repository:{repo}:pull").json()["token"]
        for ref in ("1.0", digest):
            r = get_manifest(reg, repo, ref, bearer=bearer)
            assert r.status_code == 404, (reg.name, ref)
            assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_tags_pagination(regs: RegistrySet) -> None:
    names = [f"v{i:02d}" for i in range(7)] + ["latest"]
    digest = push_image(regs.mirror, "paged", names[0], seed="same")
    man = get_manifest(regs.mirror, "paged", digest)
    for t in names[1:]:
        r = httpx.put(
            f"{regs.mirror.url}/v2/paged/manifests/{t}",
            content=man.content,
            headers={"Content-Type": man.headers["content-type"]},
        )
        assert r.status_code == 201
    url: str | None = f"{regs.mirror.url}/v2/paged/tags/list?n=3"
    pages: list[list[str]] = []
    while url:
        r = httpx.get(url)
        assert r.status_code == 200
        pages.append(r.json()["tags"])
        link = r.headers.get("link")
        url = str(httpx.URL(url).join(link.split(";")[0].strip("<> "))) if link else None
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [t for p in pages for t in p] == sorted(names)
    assert list_tags(regs.mirror, "paged") == sorted(names)
    empty = httpx.get(f"{regs.mirror.url}/v2/paged/tags/list?n=0")
    assert empty.status_code == 200 and empty.json()["tags"] == []
    # n above tags.maxtags (100) is clamped, not rejected (v3.1.1+).
    assert httpx.get(f"{regs.mirror.url}/v2/paged/tags/list?n=5000").status_code == 200
    missing = httpx.get(f"{regs.mirror.url}/v2/never-pushed/tags/list")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "NAME_UNKNOWN"


# --- fault proxy -----------------------------------------------------------------------


@pytest.fixture
def proxy(regs: RegistrySet) -> Iterator[FaultProxy]:
    fp = FaultProxy(regs.bearer.url)
    fp.start()
    try:
        yield fp
    finally:
        fp.stop()


def test_proxy_passthrough_records_requests(regs: RegistrySet, proxy: FaultProxy) -> None:
    push_image(regs.bearer, "public/proxied", "1.0")
    tok = token(regs, "repository:public/proxied:pull").json()["token"]
    r = httpx.get(
        f"{proxy.url}/v2/public/proxied/manifests/1.0",
        headers={"Accept": ACCEPT_ALL, "Authorization": f"Bearer {tok}"},
    )
    assert r.status_code == 200 and r.json()["schemaVersion"] == 2
    head = httpx.head(
        f"{proxy.url}/v2/public/proxied/manifests/1.0",
        headers={"Accept": ACCEPT_ALL, "Authorization": f"Bearer {tok}"},
    )
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(r.content)
    seen = proxy.requests
    assert [(q.method, q.path) for q in seen] == [
        ("GET", "/v2/public/proxied/manifests/1.0"),
        ("HEAD", "/v2/public/proxied/manifests/1.0"),
    ]
    assert seen[0].headers["authorization"] == f"Bearer {tok}"


def test_proxy_pushes_through(regs: RegistrySet, proxy: FaultProxy) -> None:
    """Upload Locations come back via the proxy (the client's Host is forwarded)."""
    via = Registry("proxied", proxy.host_port, proxy.url, regs.bearer.push_auth, {})
    digest = push_image(via, "public/via-proxy", "1.0", chunk_size=300)
    assert any(q.method == "PATCH" for q in proxy.requests)
    tok = token(regs, "repository:public/via-proxy:pull").json()["token"]
    assert get_manifest(regs.bearer, "public/via-proxy", digest, bearer=tok).status_code == 200


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [("status_429", 429, "TOOMANYREQUESTS"), ("status_503", 503, "UNAVAILABLE")],
)
def test_proxy_status_modes(proxy: FaultProxy, mode: str, status: int, code: str) -> None:
    proxy.set_mode(mode, retry_after=7)
    r = httpx.get(f"{proxy.url}/v2/public/x/manifests/1.0")
    assert r.status_code == status
    assert r.headers["retry-after"] == "7"
    assert r.json()["errors"][0]["code"] == code
    proxy.set_mode(mode)
    assert "retry-after" not in httpx.get(f"{proxy.url}/v2/").headers


def test_proxy_match_filter(proxy: FaultProxy) -> None:
    proxy.set_mode("status_503", match=r"/manifests/")
    assert httpx.get(f"{proxy.url}/v2/").status_code == 401  # passed through
    assert httpx.get(f"{proxy.url}/v2/public/x/manifests/1").status_code == 503
    assert [q.mode for q in proxy.requests] == ["passthrough", "status_503"]


def test_proxy_hang(proxy: FaultProxy) -> None:
    proxy.set_mode("hang")
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{proxy.url}/v2/", timeout=httpx.Timeout(5.0, read=0.5))
    assert time.monotonic() - t0 < 3
    assert proxy.requests[-1].mode == "hang"


def test_proxy_reset(proxy: FaultProxy) -> None:
    proxy.set_mode("reset")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"{proxy.url}/v2/", timeout=5)
    # Raw socket: the close is an RST, not a clean FIN.
    with socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            s.settimeout(5)
            s.recv(1024)


def test_proxy_oversized(proxy: FaultProxy) -> None:
    proxy.set_mode("oversized", size=32 << 20)
    cap = 4 << 20
    with httpx.stream("GET", f"{proxy.url}/v2/public/x/manifests/1.0", timeout=10) as r:
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == 32 << 20
        read = 0
        for chunk in r.iter_raw():
            read += len(chunk)
            if read > cap:
                break
    assert read > cap  # a client that trusts the body would keep going
    # declared_only: huge Content-Length, short body, then close.
    proxy.set_mode("oversized", size=1 << 30, declared_only=True)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{proxy.url}/v2/public/x/manifests/1.0", timeout=10)
    # Non-manifest paths are untouched by default.
    assert httpx.get(f"{proxy.url}/v2/").status_code == 401


def test_proxy_redirect_does_not_carry_authorization(regs: RegistrySet, proxy: FaultProxy) -> None:
    sink = FaultProxy(regs.open.url)
    sink.start()
    try:
        push_image(regs.open, "redir/app", "1.0")
        proxy.set_mode("redirect", target=sink.host_port)
        r = httpx.get(
            f"{proxy.url}/v2/redir/app/manifests/1.0",
            headers={"Accept": ACCEPT_ALL, "Authorization": "Bearer secret-token"},
            follow_redirects=True,
        )
        assert r.status_code == 200
        assert r.history[0].status_code == 302
        assert r.history[0].headers["location"] == f"{sink.url}/v2/redir/app/manifests/1.0"
        assert proxy.requests[0].headers["authorization"] == "Bearer secret-token"
        assert "authorization" not in sink.requests[0].headers
    finally:
        sink.stop()


def test_proxy_challenge_realm_rewrite(proxy: FaultProxy) -> None:
    proxy.set_mode("challenge_realm", realm="http://169.254.169.254/latest/meta-data")
    r = httpx.get(f"{proxy.url}/v2/private/x/manifests/1.0")
    assert r.status_code == 401
    scheme, params = parse_challenge(r.headers["www-authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == "http://169.254.169.254/latest/meta-data"
    assert params["service"] == "sandbox-registry"
    assert params["scope"] == "repository:private/x:pull"


def test_proxy_slow(proxy: FaultProxy) -> None:
    proxy.set_mode("slow", delay=0.3)
    t0 = time.monotonic()
    assert httpx.get(f"{proxy.url}/v2/").status_code == 401
    assert time.monotonic() - t0 >= 0.3


def test_stop_leaves_no_processes(tmp_path: Path) -> None:
    rs = start_registries(tmp_path)
    procs = [r.process for r in rs.all()]
    assert all(p is not None and p.poll() is None for p in procs)
    rs.stop()
    assert all(p is not None and p.poll() is not None for p in procs)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{rs.open.url}/v2/", timeout=1)
    cfg = yaml.safe_load((tmp_path / "open" / "config.yml").read_text())
    assert cfg["storage"]["delete"]["enabled"] is True
