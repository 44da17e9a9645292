"""`pullmedic run`: settings as nested value objects, then kopf with our registry."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
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
