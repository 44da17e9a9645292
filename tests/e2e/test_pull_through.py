"""Pull-through caches on the real node: containerd's hosts.toml sends pulls to a cache.

Two caches (distribution in proxy mode, ``sandbox.registries.start_pull_through``):

- an anonymous cache in front of an upstream registry of this module's own: the node's
  ``certs.d/<upstream>/hosts.toml`` lists the cache as a mirror, then the upstream as
  ``server`` (containerd's fallback). A tag missing upstream fails at both hops; pullmedic
  says TagNotFound at the last hop, naming both, and heals the Deployment to a tag the
  node then pulls through the cache.
- a cache whose upstream credentials are wrong, in front of the sandbox's Basic registry,
  the only way to a registry name that resolves nowhere else (``hosts.toml`` names the
  cache as mirror and server, as the sandbox's ECR is served). Declared to pullmedic with
  ``--pull-through-cache``: the cache answers 404, the upstream has the tag, and the
  cause names the cache hop.

Each hosts.toml is removed at the end (the node is shared by the session).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import procs
from sandbox.images import push_image
from sandbox.kube import deployment, dockerconfig_secret, events_for, running_pods, wait_for
from sandbox.registries import (
    BASIC_USERS,
    Registry,
    _start_one,
    start_pull_through,
    write_hosts_toml,
)
from tests.e2e.conftest import OperatorProcess

pytestmark = pytest.mark.cluster
ANNOTATION = "pullmedic.dev/last-remediation"
HUB = "hub.pullmedic.test"  # the broken cache's name for the node: resolves nowhere else
USER, PASSWORD = next(iter(BASIC_USERS.items()))


@dataclass
class Caches:
    upstream: Registry  # open, this module's own
    cache: Registry  # anonymous cache in front of it
    broken: Registry  # cache in front of the Basic registry with a wrong password


@pytest.fixture(scope="module")
def caches(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caches]:
    if sandbox.node is None:
        pytest.skip("needs the real node's containerd (hosts.toml)")
    tmp = tmp_path_factory.mktemp("pull-through")
    made: list[Registry] = []
    written: list[Path] = []
    try:
        upstream = _start_one("pt-upstream", tmp, None, 100, None, {}, 30.0)
        made.append(upstream)
        cache = start_pull_through(tmp, "pt-cache", upstream)
        made.append(cache)
        basic = sandbox.registries.basic
        broken = start_pull_through(tmp, "pt-broken", basic, credentials=(USER, "wrong"))
        made.append(broken)
        certs_d = sandbox.node.certs_d
        written.append(write_hosts_toml(certs_d, upstream.host, [cache.url], upstream.url))
        written.append(write_hosts_toml(certs_d, HUB, [broken.url], broken.url))
        yield Caches(upstream, cache, broken)
    finally:
        for f in written:
            shutil.rmtree(f.parent, ignore_errors=True)
        for r in made:
            procs.stop(r.process)


@pytest.fixture
def cache_operator(
    sandbox: Any, caches: Caches, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, sandbox.registries, tmp_path / "operator.log")
    insecure = [caches.upstream.host, caches.cache.host, caches.broken.host, HUB]
    op.start(
        "--registry-config-dir",
        str(sandbox.node.certs_d),
        "--pull-through-cache",
        f"{HUB}={sandbox.registries.basic.host}",
        *[a for h in insecure for a in ("--insecure-registry", h)],
    )
    try:
        yield op
    finally:
        op.stop()


def _kubelet_failure(core: Any, ns: str, label: str) -> str:
    for p in core.list_namespaced_pod(ns, label_selector=label).items:
        for cs in p.status.container_statuses or []:
            w = cs.state.waiting
            if w is not None and w.reason in ("ErrImagePull", "ImagePullBackOff"):
                return str(w.message or w.reason)
    return ""


def _diagnosed(core: Any, ns: str) -> str:
    for e in events_for(core, ns):
        if e.source.component == "pullmedic" and e.reason == "PullDiagnosed":
            return str(e.message)
    return ""


def test_tag_missing_upstream_is_healed_through_the_cache(
    caches: Caches,
    cache_operator: OperatorProcess,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    repo = f"lib/web-{uuid.uuid4().hex[:6]}"
    for tag in ("1.0.0", "1.0.2"):
        push_image(caches.upstream, repo, tag)
    bad = f"{caches.upstream.host}/{repo}:1.0.9"
    apps.create_namespaced_deployment(namespace, deployment("web", bad, replicas=2))
    message = wait_for(
        lambda: _kubelet_failure(core, namespace, "app=web"), "the kubelet's pull to fail", 90
    )
    assert "not found" in message, message  # both hops answered 404

    policy = cluster_policy([namespace], mode="Remediate")
    good = f"{caches.upstream.host}/{repo}:1.0.2"

    def healed() -> bool:
        d = apps.read_namespaced_deployment("web", namespace)
        pods = running_pods(core, namespace, "app=web")
        return d.spec.template.spec.containers[0].image == good and len(pods) == 2

    wait_for(healed, "the Deployment patched to 1.0.2 and both replicas running", 120)
    record = json.loads(
        apps.read_namespaced_deployment("web", namespace).metadata.annotations[ANNOTATION]
    )
    assert record["cause"] == "TagNotFound"
    assert record["policy"] == f"ClusterPullPolicy/{policy}"
    said = wait_for(lambda: _diagnosed(core, namespace), "pullmedic's diagnosis", 30)
    assert "TagNotFound" in said, said
    assert f"at server {caches.upstream.url}, the last hop" in said, said
    assert f"mirror {caches.cache.url} (TagNotFound)" in said, said
    # the node pulled the healed tag through the cache: its access log has containerd's
    # request (pullmedic's own say useragent="pullmedic/...")
    assert caches.cache.log_path is not None
    log = caches.cache.log_path.read_text(errors="replace").splitlines()
    # containerd adds ?ns=<upstream> to a mirror's URLs, so the log may quote the URI.
    path = f"/v2/{repo}/manifests/1.0.2"
    assert any(path in line and "containerd" in line for line in log), [
        line for line in log if path in line
    ][-5:]


def test_cache_with_wrong_upstream_credentials_is_named(
    sandbox: Any,
    caches: Caches,
    cache_operator: OperatorProcess,
    core: Any,
    apps: Any,
    namespace: str,
) -> None:
    basic = sandbox.registries.basic
    repo = f"team/cached-{uuid.uuid4().hex[:6]}"
    push_image(basic, repo, "1.0")
    # the pod's secret holds the upstream's credentials (pullmedic asks the upstream with
    # them); the cache itself is open to the node
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("upstream", namespace, basic.host, USER, PASSWORD)
    )
    image = f"{HUB}/{repo}:1.0"
    apps.create_namespaced_deployment(
        namespace,
        deployment("cached", image, replicas=1, image_pull_secrets=[{"name": "upstream"}]),
    )
    message = wait_for(
        lambda: _kubelet_failure(core, namespace, "app=cached"), "the kubelet's pull to fail", 90
    )
    assert "not found" in message, message  # the cache says 404 for its upstream's refusal
    said = wait_for(lambda: _diagnosed(core, namespace), "pullmedic's diagnosis", 90)
    assert "RegistryUnreachable" in said, said
    assert "the cache cannot fetch it" in said, said
    assert f"upstream has it ({basic.host}/{repo}:1.0)" in said, said
    assert PASSWORD not in cache_operator.logs()
