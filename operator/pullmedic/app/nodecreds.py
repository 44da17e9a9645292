"""The node's view of registries, shared by ``run``, ``diagnose``, ``explain`` and ``audit``.

Three flags, named as the kubelet and containerd name them:

- ``--credential-provider-config FILE`` and ``--credential-provider-bin-dir DIR``: the
  kubelet's ``--image-credential-provider-config`` / ``--image-credential-provider-bin-dir``;
  pullmedic runs the same plugins, and their credentials follow the pod's pull secrets;
- ``--registry-config-dir DIR``: containerd's ``config_path`` (``DIR/<host>/hosts.toml``),
  so a probe goes where the node's pull goes.

:func:`build_diagnoser` returns the prober, wrapped when providers are configured; the
admission webhook shares the operator's, so it probes with the same sources.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from pullmedic.core.credentialprovider import ProviderConfigError, ProviderSpec
from pullmedic.core.pullpath import CacheMapping, parse_cache_mapping
from pullmedic.core.registryhosts import Endpoint, HostsError
from pullmedic.kube.client import KubeApi
from pullmedic.kube.serviceaccounts import KubeServiceAccounts
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.hosts import HostsTransport, load_paths
from pullmedic.probe.netguard import guarded_transport
from pullmedic.probe.plugins import PluginRunner, load_config
from pullmedic.probe.prober import Prober
from pullmedic.probe.providers import ProviderDiagnoser
from pullmedic.probe.pullpath import HopProbers, PathDiagnoser

__all__ = ["NodeSettings", "add_arguments", "build_diagnoser", "settings_from", "uses_token_mode"]


@dataclass(frozen=True)
class NodeSettings:
    providers: tuple[ProviderSpec, ...] = ()
    bin_dir: str | None = None
    hosts: dict[str, Endpoint] = field(default_factory=dict)
    paths: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    caches: tuple[CacheMapping, ...] = ()


def add_arguments(p: argparse.ArgumentParser, *, from_env: bool = False) -> None:
    def env(name: str) -> str | None:
        return os.environ.get(name) if from_env else None

    p.add_argument(
        "--credential-provider-config",
        metavar="FILE",
        default=env("PULLMEDIC_CREDENTIAL_PROVIDER_CONFIG"),
        help="the kubelet's CredentialProviderConfig (--image-credential-provider-config): "
        "probe with the same plugins' credentials, after the pod's pull secrets",
    )
    p.add_argument(
        "--credential-provider-bin-dir",
        metavar="DIR",
        default=env("PULLMEDIC_CREDENTIAL_PROVIDER_BIN_DIR"),
        help="where the plugins named in that config are (--image-credential-provider-bin-dir)",
    )
    p.add_argument(
        "--registry-config-dir",
        metavar="DIR",
        default=env("PULLMEDIC_REGISTRY_CONFIG_DIR"),
        help="the node's containerd config_path (DIR/<host>/hosts.toml): probe the endpoints "
        "the node pulls from, in its order (a private address still needs --allow-address)",
    )
    caches = env("PULLMEDIC_PULL_THROUGH_CACHES")
    p.add_argument(
        "--pull-through-cache",
        metavar="CACHEHOST[/PREFIX]=UPSTREAM",
        action="append",
        default=[c for c in (caches or "").split(",") if c.strip()],
        help="images under CACHEHOST[/PREFIX] are a pull-through cache of UPSTREAM "
        "(cache.example.com/dockerhub=docker.io): when the cache answers not found, the "
        "upstream is probed too and the cause names the hop that failed (repeatable)",
    )


def settings_from(args: argparse.Namespace) -> NodeSettings:
    """Raises ValueError (a usage error) naming the flag and what is wrong."""
    providers: tuple[ProviderSpec, ...] = ()
    config, bin_dir = args.credential_provider_config, args.credential_provider_bin_dir
    if bool(config) != bool(bin_dir):
        raise ValueError(
            "--credential-provider-config and --credential-provider-bin-dir go together"
        )
    if config:
        try:
            providers = load_config(config)
        except ProviderConfigError as exc:
            raise ValueError(f"--credential-provider-config: {exc}") from None
        if not os.path.isdir(bin_dir):
            raise ValueError(f"--credential-provider-bin-dir: {bin_dir} is not a directory")
    paths: dict[str, tuple[Endpoint, ...]] = {}
    if args.registry_config_dir:
        try:
            paths = load_paths(args.registry_config_dir)
        except HostsError as exc:
            raise ValueError(f"--registry-config-dir: {exc}") from None
    caches: list[CacheMapping] = []
    for text in getattr(args, "pull_through_cache", None) or ():
        try:
            caches.append(parse_cache_mapping(text))
        except ValueError as exc:
            raise ValueError(f"--pull-through-cache: {exc}") from None
    hosts = {h: p[0] for h, p in paths.items()}
    return NodeSettings(providers, bin_dir, hosts, paths, tuple(caches))


def build_diagnoser(
    probe: ClientConfig, node: NodeSettings, kube: KubeApi | None = None
) -> ProviderDiagnoser:
    """The prober for ``probe``, sending requests where the node's containerd does and
    adding the node's credential providers after the pod's secrets (and telling an
    expired token from a wrong one). ``kube``: for providers in ServiceAccount token mode
    (KEP-4412), the client that reads the pod's ServiceAccount and mints its token."""
    transport = None
    if node.hosts:
        transport = HostsTransport(
            node.hosts, guarded_transport(probe.address_policy, verify=probe.verify_tls)
        )
    inner: Prober | PathDiagnoser = Prober(probe, transport=transport)
    if node.caches or any(len(p) > 1 for p in node.paths.values()):
        inner = PathDiagnoser(inner, node.paths, HopProbers(probe), node.caches)
    runner = None
    if node.providers and node.bin_dir is not None:
        accounts = KubeServiceAccounts(kube) if kube is not None else None
        runner = PluginRunner(node.providers, node.bin_dir, accounts=accounts)
    return ProviderDiagnoser(inner, runner, node.hosts)


def uses_token_mode(node: NodeSettings) -> bool:
    """Whether some configured provider runs in ServiceAccount token mode (KEP-4412)."""
    return any(p.token_attributes is not None for p in node.providers)
