"""The flags of `pullmedic run` and their environment defaults: what a user can set.

:mod:`pullmedic.app.runner` turns the parsed flags into settings and runs the operator.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from pullmedic.app import nodecreds


def _split(value: str | None) -> list[str]:
    """A comma-separated environment variable as a list (a repeatable flag's default)."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def number(kind: type[int] | type[float], variable: str) -> Callable[[str], int | float]:
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
    value = number(float, "PULLMEDIC_QUOTA_RESERVE")(text)
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
        type=number(int, "PULLMEDIC_METRICS_PORT"),
        default=env("PULLMEDIC_METRICS_PORT", "9090"),
    )
    p.add_argument(
        "--liveness-port",
        type=number(int, "PULLMEDIC_LIVENESS_PORT"),
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
        type=number(int, "PULLMEDIC_SHARDS"),
        default=env("PULLMEDIC_SHARDS", "1"),
        help="split the pods between this many replica sets by uid (needs the API "
        "server's ShardedListAndWatch gate to save work; correct without it)",
    )
    p.add_argument(
        "--shard-index",
        type=number(int, "PULLMEDIC_SHARD_INDEX"),
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
        type=number(float, "PULLMEDIC_API_TIMEOUT"),
        default=env("PULLMEDIC_API_TIMEOUT", "20"),
        help="read timeout of one Kubernetes API request, seconds (connect: 5)",
    )
    p.add_argument(
        "--watch-timeout",
        type=number(float, "PULLMEDIC_WATCH_TIMEOUT"),
        default=env("PULLMEDIC_WATCH_TIMEOUT", "30"),
        help="a watch connection is replaced after this many seconds at the latest",
    )
    p.add_argument(
        "--webhook-port",
        type=number(int, "PULLMEDIC_WEBHOOK_PORT"),
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
        type=number(int, "PULLMEDIC_AUDIT_CHECKS_PER_HOST"),
        default=env("PULLMEDIC_AUDIT_CHECKS_PER_HOST", "25"),
        help="audit budget: registry checks per host per --audit-period",
    )
    p.add_argument(
        "--audit-period",
        type=number(float, "PULLMEDIC_AUDIT_PERIOD"),
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
