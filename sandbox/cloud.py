"""A cloud registry, offline: ECR with the real kubelet credential provider plugin.

On EKS the kubelet runs ``ecr-credential-provider`` (k8s.io/cloud-provider-aws) for images
on ``<account>.dkr.ecr.<region>.amazonaws.com``; the plugin calls ECR's
``GetAuthorizationToken`` and answers ``AWS`` / the token. Here every part is real but
the AWS API: the pinned plugin binary, built by ``build.sh``, asks ``moto_server`` (a
stand-in for the AWS API on loopback, reached through the AWS SDK's endpoint override
``AWS_ENDPOINT_URL_ECR``), whose token is ``<account>-auth-token``; a distribution
registry with htpasswd user ``AWS`` and that password is served under the ECR name to
the node through containerd's ``hosts.toml`` (the name resolves nowhere else).

``kubelet_args()`` are the real kubelet's flags; ``pullmedic_args()`` give pullmedic the
same config file and plugin directory, and the node's ``hosts.toml`` directory.

The same config also holds a KEP-4412 provider in ServiceAccount token mode
(``tokenprovider.py``, ``CloudRegistry.token``) for a second registry name.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sandbox import procs
from sandbox.paths import binary
from sandbox.registries import Registry, _start_one
from sandbox.tokenprovider import TOKEN_HOST, TokenRegistry, start_token_registry
from sandbox.tokenserver import hash_password

ECR_ACCOUNT = "123456789012"
ECR_REGION = "us-east-1"
ECR_HOST = f"{ECR_ACCOUNT}.dkr.ecr.{ECR_REGION}.amazonaws.com"
ECR_USER = "AWS"
ECR_PASSWORD = f"{ECR_ACCOUNT}-auth-token"  # what moto's GetAuthorizationToken answers
PLUGIN = "ecr-credential-provider"


@dataclass
class CloudRegistry:
    registry: Registry  # push with registry.push_auth; pods name images under ECR_HOST
    moto_url: str
    provider_config: Path
    bin_dir: Path
    moto: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    token: TokenRegistry | None = None  # the KEP-4412 provider and its registry

    def image(self, repo: str, tag: str) -> str:
        return f"{ECR_HOST}/{repo}:{tag}"

    def kubelet_args(self) -> list[str]:
        return [
            f"--image-credential-provider-config={self.provider_config}",
            f"--image-credential-provider-bin-dir={self.bin_dir}",
        ]

    def pullmedic_args(self, registry_config_dir: Path) -> list[str]:
        return [
            "--credential-provider-config",
            str(self.provider_config),
            "--credential-provider-bin-dir",
            str(self.bin_dir),
            "--registry-config-dir",
            str(registry_config_dir),
        ]

    def serve_on_node(self, certs_d: Path) -> None:
        """The node's containerd sends pulls for ECR_HOST (and TOKEN_HOST) to the sandbox
        registries.

        containerd 1.6 refuses a hosts.toml without a ``[host]`` table ("invalid `host`
        tree") and then pulls from the name itself; the same address is also the
        ``server``, so a 404 is not followed by a try of the real (unresolvable) name.
        """
        _serve(certs_d, ECR_HOST, self.registry.url)
        if self.token is not None:
            _serve(certs_d, TOKEN_HOST, self.token.registry.url)

    def connect(self, cluster: object) -> None:
        """Once the API server runs (the token-mode provider's TokenReview endpoint and the
        nodes' audience grant)."""
        if self.token is not None:
            self.token.connect(cluster)

    def stop(self) -> None:
        if self.token is not None:
            self.token.stop()
        procs.stop(self.registry.process)
        self.registry.process = None
        procs.stop(self.moto)
        self.moto = None


def _serve(certs_d: Path, host: str, url: str) -> None:
    d = certs_d / host
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(
        f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited; log tail:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"moto_server not listening after {timeout}s")


def provider_config(moto_url: str) -> dict[str, object]:
    """The CredentialProviderConfig an EKS node has, plus the AWS SDK's endpoint override
    (and dummy keys) pointing at the stand-in; the kubelet and pullmedic read this file."""
    env = {
        "AWS_ENDPOINT_URL_ECR": moto_url,
        "AWS_ACCESS_KEY_ID": "sandbox",
        "AWS_SECRET_ACCESS_KEY": "sandbox",
        "AWS_REGION": ECR_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return {
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [
            {
                "name": PLUGIN,
                "matchImages": ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"],
                "defaultCacheDuration": "12h",
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "env": [{"name": k, "value": v} for k, v in env.items()],
            }
        ],
    }


def start_ecr(workdir: Path, timeout: float = 30.0, *, token_mode: bool = True) -> CloudRegistry:
    """moto_server, the ECR-named registry, the plugin directory and the config file;
    with ``token_mode`` also the KEP-4412 provider and its registry, in the same config."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    log = workdir / "moto.log"
    moto = procs.spawn([str(binary("moto_server")), "-H", "127.0.0.1", "-p", str(port)], log)
    try:
        _wait_port(port, moto, log, timeout)
        htpasswd = workdir / "ecr" / "htpasswd"
        htpasswd.parent.mkdir(parents=True, exist_ok=True)
        htpasswd.write_text(f"{ECR_USER}:{hash_password(ECR_PASSWORD)}\n")
        registry = _start_one(
            "ecr",
            workdir,
            {"htpasswd": {"realm": "sandbox-ecr", "path": str(htpasswd)}},
            100,
            (ECR_USER, ECR_PASSWORD),
            {ECR_USER: ECR_PASSWORD},
            timeout,
        )
    except BaseException:
        procs.stop(moto)
        raise
    bin_dir = workdir / "plugins"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / PLUGIN
    if not link.exists():
        link.symlink_to(binary(PLUGIN))
    cfg = workdir / "credential-providers.yaml"
    moto_url = f"http://127.0.0.1:{port}"
    config = provider_config(moto_url)
    token = None
    if token_mode:
        try:
            token = start_token_registry(workdir, bin_dir, timeout)
        except BaseException:
            procs.stop(registry.process)
            procs.stop(moto)
            raise
        providers = config["providers"]
        assert isinstance(providers, list)
        providers.append(token.entry)
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return CloudRegistry(registry, moto_url, cfg, bin_dir, moto, token)
