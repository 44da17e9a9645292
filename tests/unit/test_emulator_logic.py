"""Pure logic of the node emulator: texts, back-off arithmetic, challenges, platforms, status."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import httpx
import pytest

from sandbox.emulator import (
    Backoff,
    Ctr,
    PodRecord,
    SpamFilter,
    aggregate_errors,
    build_status,
    container_ref,
    default_pull_policy,
    go_duration,
    go_quote,
)
from sandbox.pull import (
    Platform,
    Puller,
    PullError,
    RuntimeErr,
    UnexpectedStatus,
    _Authorizer,
    _Resp,
    go_query,
    go_transport_error,
    is_loopback_host,
    normalize_platform,
    parse_platform,
    parse_www_authenticate,
    platform_vector,
    registry_error_text,
    select_manifest,
    to_pull_error,
)

# --- kubelet texts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0004, "0s"),
        (0.313, "313ms"),
        (0.3139, "313ms"),
        (1.0, "1s"),
        (1.594, "1.594s"),
        (1.5, "1.5s"),
        (62.5, "1m2.5s"),
        (60.0, "1m0s"),
        (3600.0, "1h0m0s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_aggregate_errors_like_utilerrors() -> None:
    assert aggregate_errors([]) == ""
    assert aggregate_errors(["a"]) == "a"
    assert aggregate_errors(["a", "a"]) == "a"
    assert aggregate_errors(["a", "b", "a"]) == "[a, b]"


def test_default_pull_policy() -> None:
    assert default_pull_policy("latest") == "Always"
    assert default_pull_policy("1.27") == "IfNotPresent"
    assert default_pull_policy(None) == "IfNotPresent"  # digest only


def test_go_quote() -> None:
    assert go_quote('a"b') == '"a\\"b"'


def test_pull_error_keeps_prefix_only_for_known_codes() -> None:
    nf = to_pull_error("docker.io/library/x:1", RuntimeErr("x: not found", "notfound"))
    assert str(nf) == (
        'rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/library/x:1"'
        ": x: not found"
    )
    unk = to_pull_error("docker.io/library/x:1", RuntimeErr("boom"))
    assert str(unk) == 'failed to pull and unpack image "docker.io/library/x:1": boom'
    assert isinstance(unk, PullError) and unk.code == "Unknown"


def test_unexpected_status_text() -> None:
    """containerd 1.6 (the real node's runtime) prints only the status."""
    e = UnexpectedStatus("HEAD", "http://h/v2/a/manifests/1", 403, "Forbidden", b"")
    assert str(e) == "unexpected status: 403 Forbidden"
    e2 = UnexpectedStatus("GET", "http://t/token?x", 401, "", b'{"details":"no"}')
    assert str(e2) == "unexpected status: 401 Unauthorized"


def test_registry_error_text() -> None:
    assert registry_error_text(b"") == ""
    assert registry_error_text(b"not json") == ""
    assert registry_error_text(b'{"errors":[{"code":"DENIED","message":"no"}]}') == "denied: no"


def test_transport_errors_render_like_go() -> None:
    refused = httpx.ConnectError("All connection attempts failed")
    refused.__cause__ = OSError(errno.ECONNREFUSED, "Connection refused")
    assert go_transport_error("HEAD", "http://127.0.0.1:1/v2/a/manifests/1", refused) == (
        'Head "http://127.0.0.1:1/v2/a/manifests/1": dial tcp 127.0.0.1:1: connect: '
        "connection refused"
    )
    timeout = httpx.ConnectTimeout("timed out")
    assert go_transport_error("GET", "https://r.example/v2/", timeout) == (
        'Get "https://r.example/v2/": dial tcp r.example:443: i/o timeout'
    )


def test_go_query_sorts_and_escapes_like_url_values() -> None:
    q = go_query([("service", "registry.docker.io"), ("scope", "repository:library/nginx:pull")])
    assert q == "scope=repository%3Alibrary%2Fnginx%3Apull&service=registry.docker.io"
    assert go_query([("a", "x y")]) == "a=x+y"


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1:5000")
    assert is_loopback_host("localhost:5000")
    assert is_loopback_host("[::1]:5000")
    assert not is_loopback_host("registry-1.docker.io")
    assert not is_loopback_host("10.0.0.1:5000")


# --- back-off ------------------------------------------------------------------------


def test_backoff_doubles_to_cap_and_resets_after_twice_the_cap() -> None:
    b = Backoff(10.0, 300.0)
    now = 0.0
    seen = []
    for _ in range(8):
        seen.append(b.next("k", now))
        now += 1.0
    assert seen == [10, 20, 40, 80, 160, 300, 300, 300]
    assert b.in_backoff_since_update("k", now)
    assert not b.in_backoff_since_update("k", now + 300)
    # after 2 x max without an update the entry has expired: next starts over at 10 s
    assert b.next("k", now + 601) == 10


def test_backoff_window_and_gc() -> None:
    b = Backoff(0.2, 6.0)  # time_scale 0.02
    b.next("uid_img", 100.0)
    assert b.in_backoff_since_update("uid_img", 100.1)
    assert not b.in_backoff_since_update("uid_img", 100.2)
    assert not b.in_backoff_since_update("other", 100.1)
    b.gc(100.0 + 12.1)
    assert "uid_img" not in b.entries
    b.next("uid_a", 0.0)
    b.next("uid2_a", 0.0)
    b.forget_prefix("uid_")
    assert list(b.entries) == ["uid2_a"]


def test_spam_filter_burst_then_refill() -> None:
    f = SpamFilter(burst=25, refill_seconds=300.0)
    assert all(f.allow("pod", 0.0) for _ in range(25))
    assert not f.allow("pod", 0.0)
    assert f.allow("other", 0.0)
    assert not f.allow("pod", 299.0)
    assert f.allow("pod", 301.0)


# --- challenges ----------------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull",error="insufficient_scope"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/nginx:pull",
        "error": "insufficient_scope",
    }


def test_parse_several_challenges_in_one_header() -> None:
    cs = parse_www_authenticate('Basic realm="a, b", Bearer realm="http://t/token",service=s')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].params == {"realm": "a, b"}
    assert cs[1].params == {"realm": "http://t/token", "service": "s"}


def test_parse_escaped_quote_and_list() -> None:
    cs = parse_www_authenticate(['Basic realm="say \\"hi\\""', "Bearer realm=x"])
    assert cs[0].params["realm"] == 'say "hi"'
    assert cs[1].params["realm"] == "x"


def _resp(www: str, url: str = "http://r/v2/a/manifests/1") -> _Resp:
    return _Resp("HEAD", url, 401, "Unauthorized", httpx.Headers({"WWW-Authenticate": www}), b"")


def test_authorizer_insufficient_scope_on_retry_fails() -> None:
    az = _Authorizer(Puller(), None, "repository:a:pull")
    first = _resp('Bearer realm="http://t/token",service="s",scope="repository:a:pull"')
    az.add_responses("r", [first])  # no error param: set up a handler and retry
    assert az.handlers["r"].realm == "http://t/token"
    again = _resp('Bearer realm="http://t/token",service="s",error="insufficient_scope"')
    with pytest.raises(RuntimeErr) as exc:
        az.add_responses("r", [first, again])
    assert exc.value.msg == "server message: insufficient_scope: authorization failed"
    assert exc.value.kind == "invalidauth"


def test_authorizer_basic_without_credentials() -> None:
    az = _Authorizer(Puller(), None, "repository:a:pull")
    with pytest.raises(RuntimeErr) as exc:
        az.add_responses("r", [_resp('Basic realm="x"')])
    # containerd 1.6 has no handler then: resolve reports the 401 itself.
    assert exc.value.msg == "failed to find supported auth scheme: not implemented"
    assert exc.value.kind == "notimplemented"
    az2 = _Authorizer(Puller(), ("u", "p"), "repository:a:pull")
    az2.add_responses("r", [_resp('Basic realm="x"')])
    headers = asyncio.run(az2.authorize("r"))
    assert headers == {"Authorization": "Basic dTpw"}


def test_authorizer_unknown_scheme_is_not_implemented() -> None:
    az = _Authorizer(Puller(), None, "repository:a:pull")
    with pytest.raises(RuntimeErr) as exc:
        az.add_responses("r", [_resp('Negotiate realm="x"')])
    assert exc.value.kind == "notimplemented"


# --- platforms -----------------------------------------------------------------------


def test_normalize_platforms() -> None:
    assert normalize_platform("linux", "x86_64") == Platform("linux", "amd64")
    assert normalize_platform("linux", "aarch64", "v8") == Platform("linux", "arm64")
    assert normalize_platform("linux", "armhf") == Platform("linux", "arm", "v7")
    assert normalize_platform("linux", "arm") == Platform("linux", "arm", "v7")
    assert normalize_platform("linux", "i386") == Platform("linux", "386")
    assert parse_platform("linux/arm/v6") == Platform("linux", "arm", "v6")


def test_platform_vectors() -> None:
    assert platform_vector(parse_platform("linux/amd64")) == [
        Platform("linux", "amd64"),
        Platform("linux", "386"),
    ]
    arm64 = [str(p) for p in platform_vector(parse_platform("linux/arm64"))]
    assert arm64 == ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]


def _entry(os_: str, arch: str, variant: str = "", **ann: str) -> dict[str, Any]:
    plat = {"os": os_, "architecture": arch}
    if variant:
        plat["variant"] = variant
    e: dict[str, Any] = {"digest": f"sha256:{arch}{variant}", "platform": plat}
    if ann:
        e["annotations"] = ann
    return e


def test_select_manifest_skips_attestations_and_prefers_exact() -> None:
    index = {
        "manifests": [
            _entry("unknown", "unknown", **{"vnd.docker.reference.type": "attestation-manifest"}),
            _entry("linux", "386"),
            _entry("linux", "x86_64"),
            _entry("linux", "arm64"),
        ]
    }
    chosen = select_manifest(index, parse_platform("linux/amd64"))
    assert chosen is not None and chosen["platform"]["architecture"] == "x86_64"
    only386 = {"manifests": [_entry("linux", "386"), _entry("linux", "arm64")]}
    chosen = select_manifest(only386, parse_platform("linux/amd64"))
    assert chosen is not None and chosen["platform"]["architecture"] == "386"
    assert (
        select_manifest({"manifests": [_entry("linux", "arm64")]}, parse_platform("amd64")) is None
    )
    armv7 = {"manifests": [_entry("linux", "arm", "v6"), _entry("linux", "arm", "v7")]}
    chosen = select_manifest(armv7, parse_platform("linux/arm64"))
    assert chosen is not None and chosen["platform"]["variant"] == "v7"
    windows = {"manifests": [_entry("windows", "amd64")]}
    assert select_manifest(windows, parse_platform("linux/amd64")) is None


# --- status --------------------------------------------------------------------------


def _pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": spec,
        "status": {},
    }


def test_container_ref_field_paths() -> None:
    pod = _pod()
    assert container_ref(pod, "app", "c")["fieldPath"] == "spec.containers{c}"
    assert container_ref(pod, "init", "i")["fieldPath"] == "spec.initContainers{i}"
    assert container_ref(pod, "ephemeral", "e")["fieldPath"] == "spec.ephemeralContainers{e}"
    assert "fieldPath" not in container_ref(pod, None, None)


def test_status_while_init_container_fails() -> None:
    pod = _pod(
        initContainers=[{"name": "i1", "image": "x/i:1"}, {"name": "i2", "image": "x/i:2"}],
        containers=[{"name": "b", "image": "x/b:1"}, {"name": "a", "image": "x/a:1"}],
    )
    rec = PodRecord(uid="u1", pod=pod, pod_ip="10.244.0.2", start_time="2024-01-01T00:00:00Z")
    rec.waiting[("init", "i1")] = ("ErrImagePull", "rpc error: boom")
    st = build_status(rec, "node")
    assert st["phase"] == "Pending"
    inits = st["initContainerStatuses"]
    assert inits[0]["state"] == {
        "waiting": {"reason": "ErrImagePull", "message": "rpc error: boom"}
    }
    assert inits[1]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert [c["name"] for c in st["containerStatuses"]] == ["a", "b"]  # sorted by name
    for c in st["containerStatuses"]:
        assert c["state"] == {"waiting": {"reason": "PodInitializing"}}
        assert c["imageID"] == "" and c["ready"] is False and c["started"] is False
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Initialized"]["reason"] == "ContainersNotInitialized"
    assert conds["Initialized"]["message"] == "containers with incomplete status: [i1 i2]"
    assert conds["Ready"]["message"] == "containers with unready status: [a b]"
    assert conds["ContainersReady"]["reason"] == "ContainersNotReady"
    assert conds["PodScheduled"]["status"] == "True"


def test_status_running() -> None:
    pod = _pod(initContainers=[{"name": "i", "image": "x/i:1"}], containers=[{"name": "c"}])
    rec = PodRecord(uid="u1", pod=pod, pod_ip="10.244.0.3", start_time="t0")
    rec.ctrs[("init", "i")] = Ctr(
        "x/i:1", "docker.io/x/i:1", "docker.io/x/i@sha256:1", "a", "t1", "t2"
    )
    rec.ctrs[("app", "c")] = Ctr("x/c:1", "docker.io/x/c:1", "docker.io/x/c@sha256:2", "b", "t3")
    st = build_status(rec, "node")
    assert st["phase"] == "Running"
    assert st["podIP"] == "10.244.0.3" and st["hostIP"] == "127.0.0.1"
    init = st["initContainerStatuses"][0]
    assert init["state"]["terminated"]["reason"] == "Completed"
    assert init["ready"] is True and init["started"] is False
    c = st["containerStatuses"][0]
    assert c["state"] == {"running": {"startedAt": "t3"}}
    assert c["imageID"] == "docker.io/x/c@sha256:2" and c["ready"] and c["started"]
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }


def test_status_keeps_foreign_conditions_and_transition_times() -> None:
    pod = _pod(containers=[{"name": "c", "image": "x"}])
    pod["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "lastTransitionTime": "old"},
        {"type": "example.com/gate", "status": "True"},
    ]
    rec = PodRecord(uid="u1", pod=pod)
    rec.waiting[("app", "c")] = ("ImagePullBackOff", 'Back-off pulling image "x"')
    st = build_status(rec, "node")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["lastTransitionTime"] == "old"
    assert "example.com/gate" in conds
