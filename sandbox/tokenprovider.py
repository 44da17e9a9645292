"""A KEP-4412 credential provider of the sandbox's own: ServiceAccount token mode, offline.

Since Kubernetes 1.34 a provider with ``tokenAttributes`` gets the pod's ServiceAccount
token (for its audience, bound to the pod) from the kubelet. This one, a small Python
script the kubelet execs through its shebang (the test venv's interpreter; it uses the
standard library only), checks the token with a TokenReview against the sandbox API server
(for its audience) and answers credentials for one registry, only for ServiceAccounts
named ``puller``; any other ServiceAccount is refused (exit status 1).

The registry is a distribution registry with htpasswd user ``puller``, served under
``TOKEN_HOST`` to the node through containerd's ``hosts.toml`` (the name resolves nowhere
else), like the ECR one in ``cloud.py``. The provider joins the ECR provider in the one
``CredentialProviderConfig`` the kubelet and pullmedic read.

The API server is not up when the kubelet's flags are written, so the plugin reads where
to send the TokenReview from a file (``SANDBOX_TOKEN_REVIEW`` in the provider's ``env``)
written by :meth:`TokenRegistry.connect` once the cluster runs, which also lets the nodes
request tokens for the audience (``ServiceAccountNodeAudienceRestriction``: without that
RBAC grant the NodeRestriction admission refuses the kubelet's TokenRequest).
"""

from __future__ import annotations

import json
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sandbox import procs
from sandbox.registries import Registry, _start_one
from sandbox.tokenserver import hash_password

TOKEN_HOST = "registry.kep4412.sandbox"
TOKEN_AUDIENCE = "pullmedic-sandbox-registry"
TOKEN_PLUGIN = "sandbox-token-provider"
ALLOWED_SERVICE_ACCOUNT = "puller"
TOKEN_USER = "puller"
TOKEN_PASSWORD = "kep4412-puller-password"
NODE_AUDIENCE_ROLE = "sandbox-nodes-token-provider-audience"

# The plugin. Standard library only; it never prints the token.
PLUGIN_SOURCE = r"""
import json, os, ssl, sys, urllib.request

AUDIENCE = __AUDIENCE__
ALLOWED = __ALLOWED__
HOST = __HOST__
USER, PASSWORD = __USER__, __PASSWORD__


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


req = json.load(sys.stdin)
token = req.get("serviceAccountToken") or ""
if not token:
    fail("no serviceAccountToken in the request: this provider runs in token mode only")
try:
    with open(os.environ["SANDBOX_TOKEN_REVIEW"]) as f:
        api = json.load(f)
except (KeyError, OSError, ValueError) as exc:
    fail(f"no TokenReview endpoint configured: {type(exc).__name__}")
ctx = ssl.create_default_context(cafile=api["ca"])
ctx.load_cert_chain(api["cert"], api["key"])
review = {
    "apiVersion": "authentication.k8s.io/v1",
    "kind": "TokenReview",
    "spec": {"token": token, "audiences": [AUDIENCE]},
}
r = urllib.request.Request(
    api["server"] + "/apis/authentication.k8s.io/v1/tokenreviews",
    data=json.dumps(review).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(r, context=ctx, timeout=20) as resp:
    status = json.load(resp).get("status") or {}
if not status.get("authenticated"):
    fail("TokenReview: the token is not authenticated for " + AUDIENCE)
if AUDIENCE not in (status.get("audiences") or []):
    fail("TokenReview: the token is not for " + AUDIENCE)
user = (status.get("user") or {}).get("username", "")
parts = user.split(":")
if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
    fail("TokenReview: not a ServiceAccount: " + user)
if parts[3] != ALLOWED:
    fail(f"refusing ServiceAccount {parts[2]}/{parts[3]}: only {ALLOWED} may pull")
print(json.dumps({
    "apiVersion": req["apiVersion"],
    "kind": "CredentialProviderResponse",
    "cacheKeyType": "Registry",
    "cacheDuration": "1m",
    "auth": {HOST: {"username": USER, "password": PASSWORD}},
}))
"""


def plugin_source(interpreter: str = sys.executable) -> str:
    body = PLUGIN_SOURCE
    for name, value in (
        ("__AUDIENCE__", TOKEN_AUDIENCE),
        ("__ALLOWED__", ALLOWED_SERVICE_ACCOUNT),
        ("__HOST__", TOKEN_HOST),
        ("__USER__", TOKEN_USER),
        ("__PASSWORD__", TOKEN_PASSWORD),
    ):
        body = body.replace(name, json.dumps(value))
    return f"#!{interpreter}\n{body.lstrip()}"


def provider_entry(review_file: Path) -> dict[str, object]:
    """The provider's entry in the CredentialProviderConfig (KEP-4412 beta fields)."""
    return {
        "name": TOKEN_PLUGIN,
        "matchImages": [TOKEN_HOST],
        "defaultCacheDuration": "1m",
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "tokenAttributes": {
            "serviceAccountTokenAudience": TOKEN_AUDIENCE,
            "cacheType": "ServiceAccount",
            "requireServiceAccount": True,
        },
        "env": [{"name": "SANDBOX_TOKEN_REVIEW", "value": str(review_file)}],
    }


@dataclass
class TokenRegistry:
    registry: Registry  # push with registry.push_auth; pods name images under TOKEN_HOST
    plugin: Path
    review_file: Path
    entry: dict[str, object] = field(default_factory=dict)

    def image(self, repo: str, tag: str) -> str:
        return f"{TOKEN_HOST}/{repo}:{tag}"

    def connect(self, cluster: Any) -> None:
        """Once the API server runs: where the plugin sends its TokenReview (the admin
        identity; a sandbox only), and the nodes' RBAC grant to request tokens for the
        provider's audience (the NodeRestriction admission's audience restriction)."""
        pki = cluster.pki
        self.review_file.write_text(
            json.dumps(
                {
                    "server": cluster.api_url,
                    "ca": str(pki.ca_cert),
                    "cert": str(pki.admin_cert),
                    "key": str(pki.admin_key),
                }
            )
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        rbac = f"{cluster.api_url}/apis/rbac.authorization.k8s.io/v1"
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NODE_AUDIENCE_ROLE},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": [TOKEN_AUDIENCE],
                    "verbs": ["request-serviceaccounts-token-audience"],
                }
            ],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NODE_AUDIENCE_ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": NODE_AUDIENCE_ROLE,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
            ],
        }
        with httpx.Client(verify=ctx, timeout=10) as http:
            for path, doc in (("clusterroles", role), ("clusterrolebindings", binding)):
                r = http.post(f"{rbac}/{path}", json=doc)
                if r.status_code not in (201, 409):
                    raise RuntimeError(f"creating {path}/{NODE_AUDIENCE_ROLE}: {r.status_code}")

    def stop(self) -> None:
        procs.stop(self.registry.process)
        self.registry.process = None


def start_token_registry(workdir: Path, bin_dir: Path, timeout: float = 30.0) -> TokenRegistry:
    """The registry only ``puller`` may pull from, the plugin in ``bin_dir``, and its
    config entry (the caller puts it in the CredentialProviderConfig)."""
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "kep4412" / "htpasswd"
    htpasswd.parent.mkdir(parents=True, exist_ok=True)
    htpasswd.write_text(f"{TOKEN_USER}:{hash_password(TOKEN_PASSWORD)}\n")
    registry = _start_one(
        "kep4412",
        workdir,
        {"htpasswd": {"realm": "sandbox-kep4412", "path": str(htpasswd)}},
        100,
        (TOKEN_USER, TOKEN_PASSWORD),
        {TOKEN_USER: TOKEN_PASSWORD},
        timeout,
    )
    bin_dir.mkdir(parents=True, exist_ok=True)
    plugin = bin_dir / TOKEN_PLUGIN
    plugin.write_text(plugin_source())
    plugin.chmod(0o755)
    review_file = workdir / "token-review.json"
    return TokenRegistry(registry, plugin, review_file, provider_entry(review_file))
