"""`pullmedic run`: settings as nested value objects, then kopf with our registry."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import kopf
from kubernetes import client, config

from pullmedic.admission.tls import TLSSettings
from pullmedic.admission.webhook import WebhookSettings
from pullmedic.app import nodecreds
from pullmedic.app.handlers import WatchTimeouts, build_registry
from pullmedic.control.audit import AuditSettings
from pullmedic.control.engine import Engine, EngineSettings
from pullmedic.core.keyring import NodeRegistries
from pullmedic.core.sharding import Shard
from pullmedic.kube.client import RestKube, Timeouts, configure
from pullmedic.kube.leadership import LeaseSettings
from pullmedic.kube.podwatch import ApiSource, PodWatchSettings
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.netguard import AddressPolicy
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")


@dataclass(frozen=True)
class ServerSettings:
    metrics_port: int = 9090
    liveness_port: int = 8080
    bind: str = "0.0.0.0"


@dataclass(frozen=True)
class PeeringSettings:
    standalone: bool = True
    name: str = "pullmedic"
    priority: int = 0


@dataclass(frozen=True)
class OperatorSettings:
    engine: EngineSettings = field(default_factory=EngineSettings)
    probe: ClientConfig = field(default_factory=ClientConfig)
    server: ServerSettings = field(default_factory=ServerSettings)
    peering: PeeringSettings = field(default_factory=PeeringSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    kube: Timeouts = field(default_factory=Timeouts)
    watch: WatchTimeouts = field(default_factory=WatchTimeouts)
    log_format: str = "plain"
    kubeconfig: str | None = None
    node: nodecreds.NodeSettings = field(default_factory=nodecreds.NodeSettings)


def _number(kind: type[int] | type[float], variable: str) -> Callable[[str], int | float]:
    """A numeric flag whose default comes from ``variable``: a bad value is a usage error.

    Kubernetes' service links put ``<SERVICE>_PORT=tcp://IP:PORT`` into every pod of a
    namespace, so a Service named ``pullmedic-metrics`` sets ``PULLMEDIC_METRICS_PORT``.
    """

    def parse(text: str) -> int | float:
        try:
            return kind(text)
        except ValueError:
            hint = ""
            if text.startswith(("tcp://", "udp://")):
                hint = (
                    f" ({variable} looks like a Service link: set enableServiceLinks: false"
                    " on the pod, as the shipped manifests do)"
                )
            raise argparse.ArgumentTypeError(f"not a number: {text!r}{hint}") from None

    return parse


def quota_reserve(text: str) -> float:
    """``--quota-reserve``: the fraction of a registry's pull quota kept for the nodes."""
    value = _number(float, "PULLMEDIC_QUOTA_RESERVE")(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a fraction from 0 up to (not including) 1: {text!r}")
    return float(value)


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument(
        "--kubeconfig",
        default=env("KUBECONFIG"),
        help="kubeconfig file (default: in-cluster, then ~/.kube/config)",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="run without peering (default; one replica)",
    )
    p.add_argument(
        "--peering",
        metavar="NAME",
        help="use kopf peering under this name (needs the kopf.dev peering CRDs)",
    )
    p.add_argument("--priority", type=int, default=0, help="peering priority")
    p.add_argument(
        "--metrics-port",
        type=_number(int, "PULLMEDIC_METRICS_PORT"),
        default=env("PULLMEDIC_METRICS_PORT", "9090"),
    )
    p.add_argument(
        "--liveness-port",
        type=_number(int, "PULLMEDIC_LIVENESS_PORT"),
        default=env("PULLMEDIC_LIVENESS_PORT", "8080"),
    )
    p.add_argument("--bind", default=env("PULLMEDIC_BIND", "0.0.0.0"))
    p.add_argument(
        "--log-format", choices=["plain", "json"], default=env("PULLMEDIC_LOG_FORMAT", "plain")
    )
    p.add_argument(
        "--operator-namespace",
        default=env("POD_NAMESPACE"),
        help="excluded from ClusterPullPolicies unless named explicitly",
    )
    p.add_argument("--default-platform", default=env("PULLMEDIC_PLATFORM", "linux/amd64"))
    p.add_argument(
        "--allow-address",
        action="append",
        default=_split(env("PULLMEDIC_ALLOW_ADDRESSES")),
        help="CIDR the registry prober may reach despite being internal (repeat)",
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=_split(env("PULLMEDIC_INSECURE_REGISTRIES")),
        help="registry host[:port] reached over plain http (repeat)",
    )
    p.add_argument(
        "--recheck-after",
        type=float,
        default=30.0,
        help="seconds before a still-stuck workload is diagnosed again",
    )
    p.add_argument(
        "--secret-sync-interval",
        type=float,
        default=60.0,
        help="seconds between refreshes of managed secret copies from their source",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=env("PULLMEDIC_LEADER_ELECT", "") in ("1", "true"),
        help="run several replicas: the holder of a coordination.k8s.io Lease acts, the "
        "others stand by with warm state",
    )
    p.add_argument("--lease-name", default=env("PULLMEDIC_LEASE_NAME", "pullmedic"))
    p.add_argument(
        "--shards",
        type=_number(int, "PULLMEDIC_SHARDS"),
        default=env("PULLMEDIC_SHARDS", "1"),
        help="split the pods between this many replica sets by uid (needs the API "
        "server's ShardedListAndWatch gate to save work; correct without it)",
    )
    p.add_argument(
        "--shard-index",
        type=_number(int, "PULLMEDIC_SHARD_INDEX"),
        default=env("PULLMEDIC_SHARD_INDEX"),
        help="this replica's shard, 0 .. --shards - 1 (default: $PULLMEDIC_SHARD_INDEX, "
        "else the StatefulSet ordinal at the end of $POD_NAME modulo --shards: a "
        "StatefulSet of 2 x N replicas gives every shard a standby)",
    )
    p.add_argument(
        "--lease-namespace",
        default=env("PULLMEDIC_LEASE_NAMESPACE"),
        help="namespace of the Lease (default: --operator-namespace)",
    )
    p.add_argument(
        "--lease-duration",
        type=float,
        default=10.0,
        help="seconds without renewal before a standby takes over (renew deadline: 70%%)",
    )
    p.add_argument(
        "--node-credentials-for",
        action="append",
        metavar="PATTERN",
        default=_split(env("PULLMEDIC_NODE_CREDENTIAL_REGISTRIES")),
        help="registry whose pull credentials the nodes hold (credential provider plugin or "
        "node config), kubelet matchImages syntax; repeat",
    )
    nodecreds.add_arguments(p, from_env=True)
    p.add_argument(
        "--api-timeout",
        type=_number(float, "PULLMEDIC_API_TIMEOUT"),
        default=env("PULLMEDIC_API_TIMEOUT", "20"),
        help="read timeout of one Kubernetes API request, seconds (connect: 5)",
    )
    p.add_argument(
        "--watch-timeout",
        type=_number(float, "PULLMEDIC_WATCH_TIMEOUT"),
        default=env("PULLMEDIC_WATCH_TIMEOUT", "30"),
        help="a watch connection is replaced after this many seconds at the latest",
    )
    p.add_argument(
        "--webhook-port",
        type=_number(int, "PULLMEDIC_WEBHOOK_PORT"),
        default=env("PULLMEDIC_WEBHOOK_PORT", "0"),
        help="serve the admission webhook (HTTPS POST /admit) on this port; 0: off",
    )
    p.add_argument(
        "--webhook-cert",
        default=env("PULLMEDIC_WEBHOOK_CERT", "/etc/pullmedic/webhook/tls.crt"),
        help="serving certificate (PEM; reloaded when the file changes)",
    )
    p.add_argument(
        "--webhook-key", default=env("PULLMEDIC_WEBHOOK_KEY", "/etc/pullmedic/webhook/tls.key")
    )
    p.add_argument(
        "--webhook-tls",
        choices=("files", "self"),
        default=env("PULLMEDIC_WEBHOOK_TLS", "files"),
        help="files: serve --webhook-cert/--webhook-key (cert-manager writes them); self: "
        "keep a CA and serving certificate in --webhook-tls-secret and the caBundle of "
        "--webhook-configuration current (needs --operator-namespace)",
    )
    p.add_argument("--webhook-tls-secret", default="pullmedic-webhook-tls")
    p.add_argument(
        "--webhook-service",
        default="pullmedic-webhook",
        help="the Service the API server calls (names in the serving certificate)",
    )
    p.add_argument("--webhook-configuration", default="pullmedic")
    p.add_argument(
        "--webhook-cert-validity",
        type=float,
        default=90 * 86400.0,
        help="seconds a serving certificate is valid (--webhook-tls=self); renewed when a "
        "third is left",
    )
    p.add_argument(
        "--webhook-address",
        action="append",
        default=[],
        help="an IP address the API server calls the webhook at (an IP SAN; repeatable)",
    )
    p.add_argument(
        "--webhook-budget",
        type=float,
        default=1.5,
        help="seconds of registry probing per admission request (keep under its timeout)",
    )
    p.add_argument(
        "--audit-checks-per-host",
        type=_number(int, "PULLMEDIC_AUDIT_CHECKS_PER_HOST"),
        default=env("PULLMEDIC_AUDIT_CHECKS_PER_HOST", "25"),
        help="audit budget: registry checks per host per --audit-period",
    )
    p.add_argument(
        "--audit-period",
        type=_number(float, "PULLMEDIC_AUDIT_PERIOD"),
        default=env("PULLMEDIC_AUDIT_PERIOD", "10800"),
        help="audit: seconds between checks of one image, and the budget's window",
    )
    p.add_argument(
        "--quota-reserve",
        type=quota_reserve,
        default=env("PULLMEDIC_QUOTA_RESERVE", "0.2"),
        metavar="FRACTION",
        help="stop manifest GETs to a registry whose ratelimit-remaining is at or below this "
        "fraction of its ratelimit-limit (the rest is the nodes'); HEAD is still sent",
    )
    p.add_argument("--dry-run", action="store_true", help="plan and report, never write")


def _ordinal(value: str | None) -> int:
    tail = (value or "").rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _shard(args: argparse.Namespace) -> Shard:
    if args.shards < 1:
        raise ValueError("--shards must be at least 1")
    if args.shards == 1:
        return Shard()
    if args.shard_index is None:
        return Shard(_ordinal(os.environ.get("POD_NAME")) % args.shards, args.shards)
    if not 0 <= args.shard_index < args.shards:
        raise ValueError(f"--shard-index must be 0 .. {args.shards - 1}")
    return Shard(args.shard_index, args.shards)


def _lease(args: argparse.Namespace) -> LeaseSettings | None:
    if not args.leader_elect:
        return None
    namespace = args.lease_namespace or args.operator_namespace
    if not namespace:
        raise ValueError("--leader-elect needs --lease-namespace or --operator-namespace")
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    d = float(args.lease_duration)
    if d < 3:
        raise ValueError("--lease-duration must be at least 3 seconds")
    shard = _shard(args)
    return LeaseSettings(
        namespace=namespace,
        # One Lease per shard: each shard has exactly one acting replica.
        name=f"{args.lease_name}-shard-{shard.name}" if shard.sharded else args.lease_name,
        identity=identity,
        duration=d,
        renew_deadline=round(d * 0.7, 1),
        retry=max(0.5, round(d * 0.2, 1)),
    )


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _webhook_tls(args: argparse.Namespace) -> TLSSettings | None:
    if args.webhook_tls != "self":
        return None
    if not args.operator_namespace:
        raise ValueError("--webhook-tls=self needs --operator-namespace (where its Secret is)")
    return TLSSettings(
        namespace=args.operator_namespace,
        secret=args.webhook_tls_secret,
        service=args.webhook_service,
        configuration=args.webhook_configuration,
        serving_validity=args.webhook_cert_validity,
        addresses=tuple(args.webhook_address),
        directory=os.path.dirname(args.webhook_cert),  # written here, read by the server
    )


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    """Raises ValueError (a usage error) for values the operator cannot use."""
    _, problems = NodeRegistries.parse(args.node_credentials_for)
    if problems:
        raise ValueError(f"--node-credentials-for: {'; '.join(problems)}")
    return OperatorSettings(
        engine=EngineSettings(
            operator_namespace=args.operator_namespace,
            default_platform=args.default_platform,
            recheck_after=args.recheck_after,
            secret_sync_interval=args.secret_sync_interval,
            dry_run=args.dry_run,
            node_registries=tuple(args.node_credentials_for),
            lease=_lease(args),
            shard=_shard(args),
            audit=AuditSettings(
                checks_per_host=args.audit_checks_per_host,
                period=args.audit_period,
                platform=args.default_platform,
            ),
            audit_interval=max(0.5, min(60.0, args.audit_period / 4)),
        ),
        probe=ClientConfig(
            insecure_hosts=frozenset(h.lower() for h in args.insecure_registry),
            address_policy=AddressPolicy(tuple(args.allow_address)),
            quota_reserve=args.quota_reserve,
        ),
        server=ServerSettings(args.metrics_port, args.liveness_port, args.bind),
        webhook=WebhookSettings(
            port=args.webhook_port,
            bind=args.bind,
            cert_file=args.webhook_cert,
            key_file=args.webhook_key,
            budget=args.webhook_budget,
            default_platform=args.default_platform,
            operator_namespace=args.operator_namespace,
            tls=_webhook_tls(args),
        ),
        kube=Timeouts(read=args.api_timeout, total=max(60.0, 3 * args.api_timeout)),
        watch=WatchTimeouts(
            server=max(5, int(args.watch_timeout) - 10),
            client=args.watch_timeout,
            inactivity=args.watch_timeout + 5,
        ),
        peering=PeeringSettings(
            standalone=not args.peering, name=args.peering or "pullmedic", priority=args.priority
        ),
        log_format=args.log_format,
        kubeconfig=args.kubeconfig,
        node=nodecreds.settings_from(args),
    )


def api_client(kubeconfig: str | None, timeouts: Timeouts, pool: int) -> client.ApiClient:
    # The config loaders are untyped in the kubernetes package.
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg
        )
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(configure(cfg, timeouts, pool))


def run(settings: OperatorSettings) -> int:
    kopf.configure(
        verbose=os.environ.get("PULLMEDIC_DEBUG") == "1",
        debug=os.environ.get("PULLMEDIC_DEBUG") == "1",
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger("pullmedic").setLevel(logging.INFO)
    # kopf logs every handler success per object: at thousands of pods that is the hot path.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry request
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per probe
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's own login reads it
    workers = 16
    api = api_client(settings.kubeconfig, settings.kube, pool=workers)

    def make_engine() -> Engine:
        kube = RestKube(api, settings.kube, workers=workers)
        engine = Engine(
            kube,
            nodecreds.build_diagnoser(settings.probe, settings.node, kube),
            settings.engine,
        )
        w = settings.watch
        pod_watch = PodWatchSettings(w.server, w.client, w.connect)
        engine.attach_pod_watch(
            ApiSource(api.configuration, pod_watch),
            pod_watch,
            handoff_source=ApiSource(api.configuration, pod_watch),
        )
        return engine

    metrics.serve(settings.server.metrics_port, settings.server.bind)
    registry = build_registry(
        make_engine,
        health=(settings.server.bind, settings.server.liveness_port),
        watch=settings.watch,
        webhook=settings.webhook if settings.webhook.port else None,
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=settings.peering.standalone,
            # Naming a peering makes it mandatory in kopf: only when peering is wanted.
            peering_name=None if settings.peering.standalone else settings.peering.name,
            priority=settings.peering.priority,
        )
    )
    return 0
