"""What the commands (``diagnose``, ``audit``, ``explain``) read from their options alike:
the registry probe's settings and the kubeconfig's namespace, so they cannot drift apart."""

from __future__ import annotations

import argparse

from pullmedic.probe.config import ClientConfig
from pullmedic.probe.netguard import AddressPolicy


def probe_config(args: argparse.Namespace, addresses: AddressPolicy) -> ClientConfig:
    """``--timeout`` bounds each request (connecting: 5 s at most) and three of them one
    operation; ``--insecure-registry`` hosts are spoken to over plain http."""
    return ClientConfig(
        connect_timeout=min(args.timeout, 5.0),
        read_timeout=args.timeout,
        operation_timeout=args.timeout * 3,
        insecure_hosts=frozenset(h.lower() for h in args.insecure_registry),
        address_policy=addresses,
        quota_reserve=getattr(args, "quota_reserve", 0.2),
    )


def context_namespace(kubeconfig: str | None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's context (the current one unless ``context`` names
    another), "default" when it sets none, as kubectl picks it. Raises the kubernetes
    client's ``ConfigException`` or ``OSError`` when the kubeconfig cannot be read."""
    from kubernetes import config as kconfig

    contexts, ctx = kconfig.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    if context:
        ctx = next((c for c in contexts if c["name"] == context), ctx)
    return str((ctx.get("context") or {}).get("namespace") or "default")
