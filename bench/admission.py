"""Admission latency: how long the API server takes to answer a create with a webhook.

The figure is what a client sees: one POST to the real kube-apiserver (admin client
certificate, a kept-alive connection, as kubectl does), timed from request to answer. The
API server calls the webhook over TLS (the sandbox serving certificate, the sandbox CA as
``caBundle``) at ``https://127.0.0.1:PORT``. The baseline is paired with every request:
the same POST sent just before it to a namespace no webhook configuration selects, so both
see the same moment of a shared machine (a reference pass with no configuration registered
at all shows the excluded namespace costs the same).

Cases, each with a fresh object name per request:

* **warm**: the same image again (one request beforehand fills the cache);
* **cold**: an existing tag never asked for before (a new tag each request), back to back
  and paced at one request per ``PACE`` s;
* **hanging registry**: the image's registry is a :class:`sandbox.faultproxy.FaultProxy`
  in ``hang`` mode (the request is read and never answered), a new tag each request;
* **webhook frozen**: the webhook process is SIGSTOPped: the kernel still accepts the
  connection, nothing answers, so the API server waits for the configuration's
  ``timeoutSeconds`` and then applies ``failurePolicy: Ignore``;
* **operator stopped**: the process is killed, its configuration stays registered: the
  connection is refused and ``failurePolicy: Ignore`` admits.

pullmedic runs as in production (``pullmedic run --standalone --webhook-port ...``, the
manifests' ServiceAccount and RBAC), with the shipped ``MutatingWebhookConfiguration``
(``manifests/overlays/webhook/webhook.yaml``: timeout 2 s, probe budget 1.5 s) pointed at
it, and a ClusterPullPolicy in ``admission.mode: Warn`` selecting the bench namespace.
Objects are dry-run Deployments and Pods (``dryRun=All``: the webhook is called and probes,
nothing is stored), except the "operator stopped" Deployment row, which creates for real
(as ``kubectl apply`` would).

kuik (enix/kube-image-keeper, built from source by ``sandbox/peers.sh kuik``) runs its
manager against the same sandbox with the same serving certificate, its CRDs, and one
ClusterReplicatedImageSet whose upstreams are the image's registry and the sandbox mirror:
its webhook only probes a container that has an alternative (``findBestAlternative``: with a
single candidate it returns at once), so without such a resource it would measure nothing.
Its webhook handles Pods only; its configuration is the chart's (failurePolicy Ignore,
no timeoutSeconds: the API default of 10 s). Its own limits are its defaults:
``routing.activeCheck.timeout`` 1 s, result caches with a TTL of 1 s.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config

from bench.common import REPO, operator_source_digest, parse_prometheus, percentile, say, table
from sandbox import procs
from sandbox.env import Sandbox
from sandbox.env import start as start_sandbox
from sandbox.faultproxy import FaultProxy
from sandbox.images import push_image
from sandbox.kube import (
    OPERATOR_NAMESPACE,
    create_all,
    create_cluster_policy,
    install_crds,
    install_operator_identity,
    wait_for,
)

NS = "bench-admission"  # selected by the webhook configurations
BASE_NS = "bench-admission-baseline"  # selected by none of them
REPO_PATH = "bench/app"
PM_HOOK = "pullmedic-bench"
KUIK_HOOK = "kuik-bench"
KUIK_PORT = 9443  # controller-runtime's default; kuik's main.go has no flag for it
KUIK_ANNOTATION = "kuik.enix.io/original-images"
CACHE = Path(os.environ.get("PULLMEDIC_CACHE", Path.home() / ".cache" / "pullmedic"))
PEERS = REPO / "sandbox" / "peers.sh"
# Paced cold requests: one every PACE s, within the per-host probe rate (20/s).
PACE = 0.5


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


@dataclass
class Sample:
    ms: float
    status: int
    warned: bool  # a Warning header from the webhook (pullmedic)
    rewritten: bool  # the answer's image differs from the one sent
    kuik: bool  # kuik's annotation is on the answer (its webhook ran)


@dataclass
class Case:
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ms = [s.ms for s in self.samples]
        return {
            "n": len(ms),
            "p50_ms": _r(percentile(ms, 50)),
            "p99_ms": _r(percentile(ms, 99)),
            "max_ms": _r(max(ms) if ms else None),
            "statuses": sorted({s.status for s in self.samples}),
            "warned": sum(s.warned for s in self.samples),
            "rewritten": sum(s.rewritten for s in self.samples),
            "kuik_annotated": sum(s.kuik for s in self.samples),
            "ms": [round(x, 1) for x in ms],
        }


@dataclass
class Spec:
    key: str  # warm | cold | cold-paced | hanging | frozen | stopped
    kind: str  # Deployment | Pod
    images: list[str]
    dry: bool = True  # False: stored (as `kubectl apply` would), in the case name as "create"
    pace: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.key} {self.kind}" + ("" if self.dry else " create")


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def admin_client(sb: Sandbox) -> httpx.Client:
    pki = sb.cluster.pki
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return httpx.Client(base_url=sb.cluster.api_url, verify=ctx, timeout=30)


def body(kind: str, image: str) -> dict[str, Any]:
    name = f"{kind.lower()[:3]}-{uuid.uuid4().hex[:10]}"
    spec = {"containers": [{"name": "app", "image": image}], "terminationGracePeriodSeconds": 0}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def post(h: httpx.Client, kind: str, image: str, *, ns: str = NS, dry: bool = True) -> Sample:
    path = (
        f"/api/v1/namespaces/{ns}/pods"
        if kind == "Pod"
        else f"/apis/apps/v1/namespaces/{ns}/deployments"
    )
    doc = body(kind, image)
    t0 = time.perf_counter()
    r = h.post(path, params={"dryRun": "All"} if dry else None, json=doc)
    ms = (time.perf_counter() - t0) * 1000
    warned = any(k.lower() == "warning" and "pullmedic" in v for k, v in r.headers.multi_items())
    rewritten = kuik = False
    if r.status_code < 300:
        out = r.json()
        meta = out.get("metadata") or {}
        spec = out["spec"] if kind == "Pod" else out["spec"]["template"]["spec"]
        rewritten = spec["containers"][0]["image"] != image
        kuik = KUIK_ANNOTATION in (meta.get("annotations") or {})
    return Sample(ms, r.status_code, warned, rewritten, kuik)


def measure(
    h: httpx.Client, kind: str, images: list[str], *, dry: bool = True, pace: float = 0.0
) -> tuple[Case, Case]:
    """Pairs: the same request in the baseline namespace (which no webhook configuration
    selects) and then in the bench namespace, so both see the same moment of a shared
    machine. ``pace``: seconds from one pair's start to the next (0: back to back)."""
    hooked, base = Case(), Case()
    for image in images:
        t0 = time.monotonic()
        base.samples.append(post(h, kind, image, ns=BASE_NS, dry=dry))
        hooked.samples.append(post(h, kind, image, dry=dry))
        if pace:
            time.sleep(max(0.0, pace - (time.monotonic() - t0)))
    return hooked, base


def repeat(image: str, n: int) -> list[str]:
    return [image] * n


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


class Images:
    """Every tag a run asks for, pushed before it starts (a push is not what is timed)."""

    def __init__(self, sb: Sandbox, hang_host: str) -> None:
        self.sb = sb
        self.open = sb.registries.open.host
        self.hang_host = hang_host
        self.tags: list[str] = []

    def warm(self) -> str:
        return f"{self.open}/{REPO_PATH}:warm"

    def cold(self, who: str, kind: str, n: int) -> list[str]:
        return [f"{self.open}/{REPO_PATH}:{t}" for t in self._tags(f"cold-{who}-{kind}", n)]

    def hanging(self, who: str, kind: str, n: int) -> list[str]:
        return [f"{self.hang_host}/{REPO_PATH}:{t}" for t in self._tags(f"hang-{who}-{kind}", n)]

    def _tags(self, prefix: str, n: int) -> list[str]:
        tags = [f"{prefix.lower()}-{i}" for i in range(n)]
        self.tags += tags
        return tags

    def push(self) -> None:
        """Each tag on the open registry (the hanging proxy's upstream too); the warm and
        the hanging ones on the mirror as well, where kuik's alternative points."""
        for tag in ["warm", *self.tags]:
            push_image(self.sb.registries.open, REPO_PATH, tag, seed=tag)
            if tag == "warm" or tag.startswith("hang-"):
                push_image(self.sb.registries.mirror, REPO_PATH, tag, seed=tag)


# --------------------------------------------------------------------------------------
# pullmedic
# --------------------------------------------------------------------------------------


class Pullmedic:
    def __init__(self, sb: Sandbox, api: Any, state: Path, extra_hosts: list[str]) -> None:
        self.sb = sb
        self.api = api
        self.state = state
        self.extra_hosts = extra_hosts
        self.port = procs.free_port()
        self.log = state / "logs" / "pullmedic.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = procs.free_port()

    def reviews(self) -> float:
        """``pullmedic_admission_reviews_total``, all decisions: what the webhook answered."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(parse_prometheus(text, "pullmedic_admission_reviews_total").values())

    def start(self) -> None:
        kubeconfig = install_operator_identity(
            self.api,
            self.state / "operator.kubeconfig",
            self.sb.cluster.api_url,
            self.sb.cluster.pki.ca_cert,
        )
        pki = self.sb.cluster.pki
        hosts = [r.host for r in self.sb.registries.all()] + self.extra_hosts
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO)])
        argv = [
            sys.executable, "-m", "pullmedic", "run",
            "--kubeconfig", str(kubeconfig), "--standalone", "--log-format", "json",
            "--metrics-port", str(self.metrics_port),
            "--liveness-port", str(procs.free_port()),
            "--bind", "127.0.0.1", "--allow-address", "127.0.0.0/8",
            "--operator-namespace", OPERATOR_NAMESPACE,
            "--webhook-port", str(self.port),
            "--webhook-cert", str(pki.serving_cert), "--webhook-key", str(pki.serving_key),
        ]  # fmt: skip
        for h in hosts:
            argv += ["--insecure-registry", h]
        self.proc = procs.spawn(argv, self.log, env=env)
        wait_for(self._listening, "the pullmedic webhook to listen", 60)

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"pullmedic exited: see {self.log}")
        return "admission webhook listening" in self.log.read_text(errors="replace")

    def configuration(self) -> dict[str, Any]:
        """The shipped configuration, pointed at this process."""
        cfg = yaml.safe_load((REPO / "manifests/overlays/webhook/webhook.yaml").read_text())
        cfg["metadata"] = {"name": PM_HOOK}
        (hook,) = cfg["webhooks"]
        # One change: the baseline namespace is left out as kube-system is.
        hook["namespaceSelector"]["matchExpressions"][0]["values"].append(BASE_NS)
        hook["clientConfig"] = {
            "url": f"https://127.0.0.1:{self.port}/admit",
            "caBundle": base64.b64encode(self.sb.cluster.pki.ca_cert.read_bytes()).decode(),
        }
        return dict(cfg)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: gone at once, its configuration left registered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            procs.stop(self.proc)
            self.proc = None


# --------------------------------------------------------------------------------------
# kuik
# --------------------------------------------------------------------------------------


def build_kuik() -> dict[str, Any]:
    """``sandbox/peers.sh kuik``: the manager binary in the cache (no-op when warm)."""
    cmd = ["bash", str(PEERS), "kuik"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        return {"built": False, "command": "sandbox/peers.sh kuik", "error": "timed out"}
    binary = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    if p.returncode != 0 or not binary or not Path(binary).exists():
        return {
            "built": False,
            "command": "sandbox/peers.sh kuik",
            "exit_code": p.returncode,
            "error": (p.stderr or p.stdout).strip()[-1500:],
        }
    src = CACHE / "src" / "kube-image-keeper"
    rev = subprocess.run(
        ["git", "-C", str(src), "log", "-1", "--format=%H %cs"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {"built": True, "binary": binary, "source": rev, "command": "sandbox/peers.sh kuik"}


class Kuik:
    def __init__(self, sb: Sandbox, api: Any, state: Path, binary: str) -> None:
        self.sb = sb
        self.api = api
        self.state = state
        self.binary = Path(binary)
        self.log = state / "logs" / "kuik.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self, upstreams: list[str]) -> None:
        """Its CRDs, and one ClusterReplicatedImageSet: each of ``upstreams`` (the image's
        registry) with the sandbox mirror as its alternative."""
        crds = sorted((self.binary.parent / "crds").glob("*.yaml"))
        create_all(self.api, [yaml.safe_load(f.read_text()) for f in crds])
        ext = client.ApiextensionsV1Api(self.api)

        def established(name: str) -> bool:
            status = ext.read_custom_resource_definition(name).status
            conds = (status.conditions if status else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        for f in crds:
            name = yaml.safe_load(f.read_text())["metadata"]["name"]
            wait_for(lambda n=name: established(n), f"CRD {name} established")  # type: ignore[misc]
        flt = {"include": [f"/{REPO_PATH}:.+"]}
        custom = client.CustomObjectsApi(self.api)
        for i, host in enumerate(upstreams):
            wait_for(
                lambda h=host, i=i: custom.create_cluster_custom_object(  # type: ignore[misc]
                    "kuik.enix.io",
                    "v1alpha1",
                    "clusterreplicatedimagesets",
                    {
                        "apiVersion": "kuik.enix.io/v1alpha1",
                        "kind": "ClusterReplicatedImageSet",
                        "metadata": {"name": f"bench-{i}"},
                        "spec": {
                            "upstreams": [
                                {"registry": h, "path": "/bench", "imageFilter": flt},
                                {
                                    "registry": self.sb.registries.mirror.host,
                                    "path": "/bench",
                                    "imageFilter": flt,
                                },
                            ]
                        },
                    },
                ),
                "ClusterReplicatedImageSet accepted",
                30,
            )

    def start(self) -> None:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", KUIK_PORT))
            except OSError as e:
                raise RuntimeError(f"kuik listens on :{KUIK_PORT} (no flag for it): {e}") from e
        certs = self.state / "kuik-certs"
        certs.mkdir(exist_ok=True)
        shutil.copy(self.sb.cluster.pki.serving_cert, certs / "tls.crt")
        shutil.copy(self.sb.cluster.pki.serving_key, certs / "tls.key")
        cfg = self.state / "kuik-config.yaml"
        cfg.write_text("{}\n")  # its defaults
        self.health = procs.free_port()
        env = dict(os.environ, KUBECONFIG=str(self.sb.kubeconfig))
        argv = [
            str(self.binary),
            f"--config={cfg}",
            f"--webhook-cert-path={certs}",
            f"--health-probe-bind-address=127.0.0.1:{self.health}",
            "--metrics-bind-address=0",
            "--leader-elect=false",
        ]
        self.proc = procs.spawn(argv, self.log, env=env)
        wait_for(self._ready, "kuik's manager to be ready", 60)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"kuik exited ({self.proc.returncode}): see {self.log}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.health}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def configuration(self) -> dict[str, Any]:
        """The chart's configuration (templates/mutatingwebhookconfiguration.yaml), its
        namespaceSelector narrowed to the bench namespace, pointed at this process."""
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": KUIK_HOOK},
            "webhooks": [
                {
                    "name": "mpod-v1.kb.io",
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{KUIK_PORT}/mutate--v1-pod",
                        "caBundle": base64.b64encode(
                            self.sb.cluster.pki.ca_cert.read_bytes()
                        ).decode(),
                    },
                    "failurePolicy": "Ignore",
                    "reinvocationPolicy": "IfNeeded",
                    "sideEffects": "NoneOnDryRun",
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": NS},
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                }
            ],
        }

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: gone at once, its configuration left registered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            procs.stop(self.proc)
            self.proc = None


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@contextmanager
def registered(adm: client.AdmissionregistrationV1Api, cfg: dict[str, Any]) -> Iterator[None]:
    adm.create_mutating_webhook_configuration(cfg)  # type: ignore[arg-type]
    try:
        yield
    finally:
        adm.delete_mutating_webhook_configuration(cfg["metadata"]["name"])


def wait_answered(check: Callable[[], bool], what: str) -> None:
    """The API server's webhook client and the webhook's own watches settle a moment after
    the configuration (or the policy) is created."""
    wait_for(check, what, 60, every=0.5)


def run(quick: bool = False) -> dict[str, Any]:
    n = 10 if quick else 50
    n_slow = 5 if quick else 20
    n_frozen = 3 if quick else 5
    state = Path(tempfile.mkdtemp(prefix="pullmedic-bench-admission-"))
    say(f"admission: starting sandbox in {state}")
    sb = start_sandbox(state, time_scale=1.0, emulator=False)  # no pod ever runs here
    cleanup: list[Callable[[], None]] = []
    cases: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {
        "sizes": {"n": n, "n_cold_hanging": n_slow, "n_frozen": n_frozen, "pace_s": PACE},
        "operator_source_sha256": operator_source_digest(),
        "load_average_at_start": list(os.getloadavg()),
        "webhook_timeouts_s": {
            "pullmedic": 2,
            "pullmedic_probe_budget": 1.5,
            "kuik": 10,
            "kuik_active_check": 1,
        },
        "cases": cases,
    }
    try:
        api = config.new_client_from_config(config_file=str(sb.kubeconfig))  # type: ignore[no-untyped-call]
        install_crds(api)
        core = client.CoreV1Api(api)
        adm = client.AdmissionregistrationV1Api(api)
        for ns in (NS, BASE_NS):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            wait_for(
                lambda ns=ns: core.read_namespaced_service_account("default", ns),  # type: ignore[misc]
                f"SA in {ns}",
            )
        proxy = FaultProxy(sb.registries.open.url)
        proxy.start()
        cleanup.append(proxy.stop)
        images = Images(sb, proxy.host_port)
        warm = images.warm()

        def plan(who: str, kind: str) -> list[Spec]:
            return [
                Spec("warm", kind, repeat(warm, n)),
                Spec("cold", kind, images.cold(who, kind, n_slow)),
                Spec("cold-paced", kind, images.cold(f"{who}-paced", kind, n_slow), pace=PACE),
                Spec("hanging", kind, images.hanging(who, kind, n_slow)),
            ]

        pm_plan = plan("pm", "Deployment") + plan("pm", "Pod")
        kuik_plan = plan("kuik", "Pod")
        say(f"admission: pushing {len(images.tags) + 1} tags")
        images.push()
        proxy.set_mode("hang")
        h = admin_client(sb)
        cleanup.append(h.close)

        def run_plan(who: str, specs: list[Spec], answered: Callable[[], float] | None) -> None:
            for sp in specs:
                before = answered() if answered else 0.0
                hooked, base = measure(h, sp.kind, sp.images, dry=sp.dry, pace=sp.pace)
                c = {"hooked": hooked.summary(), "baseline": base.summary()}
                if answered:
                    c["hooked"]["answered_by_webhook"] = int(answered() - before)
                cases[f"{who} {sp.name}"] = c
                say(f"admission: {who} {sp.name}: {_pp(c['hooked'])} ms")

        def down(who: str, proc: Pullmedic | Kuik, specs: list[Spec]) -> None:
            """Frozen (SIGSTOP), then killed; its configuration stays registered."""
            proc.signal(signal.SIGSTOP)
            run_plan(who, [Spec("frozen", "Pod", repeat(warm, n_frozen))], None)
            proc.kill()
            run_plan(who, specs, None)

        # -- reference: no configuration registered at all -----------------------------
        for kind in ("Deployment", "Pod"):
            post(h, kind, warm)  # the connection and the API server's caches
            post(h, kind, warm, ns=BASE_NS)
        run_plan(
            "none", [Spec("registered", k, repeat(warm, n)) for k in ("Deployment", "Pod")], None
        )

        # -- pullmedic -----------------------------------------------------------------
        pm = Pullmedic(sb, api, state, [proxy.host_port])
        cleanup.append(pm.stop)
        pm.start()
        custom = client.CustomObjectsApi(api)
        create_cluster_policy(
            custom, "bench-admission", [NS], {"mode": "Suggest", "admission": {"mode": "Warn"}}
        )
        typo = f"{images.open}/{REPO_PATH}:no-such-tag"
        with registered(adm, pm.configuration()):
            wait_answered(
                lambda: post(h, "Deployment", typo).warned, "pullmedic's warning on a typo"
            )
            for kind in ("Deployment", "Pod"):
                post(h, kind, warm)  # fills the cache
            run_plan("pullmedic", pm_plan, pm.reviews)
            down(
                "pullmedic",
                pm,
                [
                    Spec("stopped", "Deployment", repeat(warm, n), dry=False),
                    Spec("stopped", "Pod", repeat(warm, n)),
                ],
            )

        # -- kuik ----------------------------------------------------------------------
        built = build_kuik()
        result["kuik"] = built
        if built["built"]:
            try:
                k = Kuik(sb, api, state, built["binary"])
                cleanup.append(k.stop)
                k.install([images.open, proxy.host_port])
                k.start()
                with registered(adm, k.configuration()):
                    wait_answered(lambda: post(h, "Pod", warm).kuik, "kuik's annotation on a Pod")
                    post(h, "Pod", warm)
                    run_plan("kuik", kuik_plan, None)
                    down("kuik", k, [Spec("stopped", "Pod", repeat(warm, n))])
                result["kuik"]["ran"] = True
            except Exception as e:
                say(f"admission: kuik did not run: {e}")
                log = state / "logs" / "kuik.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                result["kuik"].update(ran=False, error=f"{type(e).__name__}: {e}", log_tail=tail)
    finally:
        for fn in reversed(cleanup):
            try:
                fn()
            except Exception as e:
                say(f"cleanup failed: {e}")
        sb.stop()
        if os.environ.get("BENCH_KEEP") == "1":
            say(f"state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------

ROWS = [
    ("warm", "same image again (warm cache)"),
    ("cold", "a new tag each time, back to back (cold cache)"),
    ("cold-paced", "a new tag each time, one per 0.5 s (cold cache)"),
    ("hanging", "registry hangs, a new tag each time"),
    ("frozen", "webhook process frozen (SIGSTOP)"),
    ("stopped", "webhook process killed, configuration left"),
]
KINDS = ("Deployment", "Pod", "Deployment create")


def _pp(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    return f"{c['p50_ms']:.0f} / {c['p99_ms']:.0f}"


def _what(c: dict[str, Any] | None, who: str) -> str:
    if not c:
        return ""
    bits = [f"n={c['n']}", "HTTP " + ",".join(map(str, c["statuses"]))]
    if "answered_by_webhook" in c:
        bits.append(f"{c['answered_by_webhook']} answered")
    if who == "pullmedic" and c["warned"]:
        bits.append(f"{c['warned']} warned")
    if c["rewritten"]:
        bits.append(f"{c['rewritten']} rewritten")
    if who == "kuik" and c["kuik_annotated"] < c["n"]:
        bits.append(f"{c['n'] - c['kuik_annotated']} not seen by kuik")
    bits.append(f"max {c['max_ms']:.0f}")
    return ", ".join(bits)


def render(r: dict[str, Any]) -> str:
    cases = r["cases"]
    rows = []
    for key, label in ROWS:
        for kind in KINDS:
            pm = cases.get(f"pullmedic {key} {kind}")
            kk = cases.get(f"kuik {key} {kind}")
            if not pm and not kk:
                continue
            rows.append(
                [
                    label,
                    kind,
                    _pp(pm and pm["baseline"]),
                    _pp(pm and pm["hooked"]),
                    _what(pm and pm["hooked"], "pullmedic"),
                    _pp(kk and kk["baseline"]) if kk else "",
                    _pp(kk["hooked"]) if kk else ("Pods only" if kind != "Pod" else "-"),
                    _what(kk and kk["hooked"], "kuik"),
                ]
            )
    out = table(
        "Admission: API server answer time, ms, p50 / p99 (dry runs unless 'create')",
        [
            "case",
            "object",
            "baseline",
            "pullmedic",
            "pullmedic answers",
            "baseline",
            "kuik",
            "kuik answers",
        ],
        rows,
    )
    ref = [cases.get(f"none registered {k}") for k in ("Deployment", "Pod")]
    if all(ref):
        out += (
            "\nBaseline: the same request, in the same moment, to a namespace no webhook "
            "configuration selects. With no configuration registered at all: "
            + ", ".join(
                f"{k} {_pp(c['hooked'])} (excluded namespace {_pp(c['baseline'])})"
                for k, c in zip(("Deployment", "Pod"), ref, strict=True)
                if c
            )
            + " ms.\n"
        )
    k = r.get("kuik") or {}
    if not k:
        pass
    elif not k.get("built"):
        out += f"\nkuik not built: `{k.get('command')}`: {k.get('error')}\n"
    elif not k.get("ran"):
        out += f"\nkuik built but did not run: {k.get('error')}\n"
    else:
        out += f"\nkuik source: {k.get('source')}\n"
    return out


def headline(r: dict[str, Any]) -> str:
    """Warm answers, and the slowest answer with the registry hanging, against the timeout."""
    cases = r["cases"]
    warm = [
        f"{_pp(cases[f'pullmedic warm {k}']['hooked'])} ms ({k})"
        for k in ("Deployment", "Pod")
        if f"pullmedic warm {k}" in cases
    ]
    hanging = [
        c["hooked"]["max_ms"]
        for key, c in cases.items()
        if key.startswith("pullmedic hanging") and c["hooked"].get("max_ms") is not None
    ]
    out = ("warm cache p50 / p99: " + ", ".join(warm)) if warm else "no warm case"
    if hanging:
        timeout = (r.get("webhook_timeouts_s") or {}).get("pullmedic")
        out += f"; with the registry hanging every answer came within {max(hanging):.0f} ms"
        if timeout is not None:
            out += f" (webhook timeout {timeout} s)"
    return out
