"""KEP-4412, ServiceAccount token mode: what the kubelet sends a provider with
``tokenAttributes`` for a pod's ServiceAccount (the token's audience and binding, the
annotations, the cache key), or why it does not run the plugin at all.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

from pullmedic.core.credentialprovider import TokenAttributes
from pullmedic.core.providerexchange import PluginResponse

# ---- KEP-4412: service-account-token mode -------------------------------------------------

# The kubelet leaves expirationSeconds unset (the API's default, one hour); pullmedic asks
# for the shortest lifetime the API server accepts: the token serves one probe.
TOKEN_EXPIRATION_SECONDS: Final = 600


@dataclass(frozen=True)
class PodIdentity:
    """Whose pull it is: the pod (``uid`` empty when the pod does not exist yet, as in
    admission or ``pullmedic diagnose --service-account``) and its ServiceAccount (empty
    for a pod without one, such as a static pod)."""

    namespace: str
    service_account: str
    pod_name: str = ""
    pod_uid: str = ""

    @classmethod
    def of_pod(cls, pod: Mapping[str, object]) -> PodIdentity:
        meta = pod.get("metadata")
        spec = pod.get("spec")
        m = meta if isinstance(meta, Mapping) else {}
        sp = spec if isinstance(spec, Mapping) else {}
        sa = sp.get("serviceAccountName") or sp.get("serviceAccount") or ""
        return cls(
            namespace=str(m.get("namespace") or ""),
            service_account=str(sa),
            pod_name=str(m.get("name") or ""),
            pod_uid=str(m.get("uid") or ""),
        )

    @property
    def account(self) -> str:
        return f"{self.namespace}/{self.service_account}"


@dataclass(frozen=True)
class ServiceAccountInfo:
    """What the kubelet reads of a ServiceAccount in token mode."""

    namespace: str
    name: str
    uid: str
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: Mapping[str, object]) -> ServiceAccountInfo:
        meta = obj.get("metadata")
        m = meta if isinstance(meta, Mapping) else {}
        raw = m.get("annotations")
        ann = (
            {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}
            if isinstance(raw, Mapping)
            else {}
        )
        return cls(
            str(m.get("namespace") or ""), str(m.get("name") or ""), str(m.get("uid") or ""), ann
        )


class ServiceAccounts(Protocol):
    """The Kubernetes edge's side of token mode (implemented in ``kube/``)."""

    async def service_account(self, namespace: str, name: str) -> ServiceAccountInfo | None:
        """The ServiceAccount, or None when it does not exist."""

    async def token(self, namespace: str, name: str, request: Mapping[str, object]) -> str:
        """A token from the TokenRequest API (``request`` is the TokenRequest body).
        Raises an exception whose message never holds the token."""


class TokenSkipReason(StrEnum):
    """Why the kubelet would not run a token-mode plugin for a pod (it then pulls
    without the provider's credentials)."""

    NoServiceAccount = "NoServiceAccount"
    ServiceAccountNotFound = "ServiceAccountNotFound"
    RequiredAnnotationMissing = "RequiredAnnotationMissing"
    ServiceAccountUnknown = "ServiceAccountUnknown"  # pullmedic was not told whose pull
    TokenRequestFailed = "TokenRequestFailed"


@dataclass(frozen=True)
class TokenModeSkip:
    reason: TokenSkipReason
    message: str


@dataclass(frozen=True)
class TokenMode:
    """What the kubelet sends a token-mode plugin for this pod: a token for ``audience``
    bound to the pod (``token_request`` builds the TokenRequest), the annotations, and the
    ServiceAccount part of its cache key. ``account`` None: the plugin runs without a
    token (no ServiceAccount, and ``requireServiceAccount: false``)."""

    audience: str
    account: ServiceAccountInfo | None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def request(self, identity: PodIdentity) -> dict[str, object]:
        return token_request(self.audience, identity, self.account.uid if self.account else "")


def token_mode(
    attrs: TokenAttributes,
    identity: PodIdentity | None,
    account: ServiceAccountInfo | None,
) -> TokenMode | TokenModeSkip:
    """The kubelet's decision for a provider with ``tokenAttributes`` (plugin.go
    ``provide`` and ``getServiceAccountData``), given the pod and its ServiceAccount as read
    (None: not found). ``identity`` None: pullmedic does not know whose pull it is."""
    if identity is None:
        return TokenModeSkip(
            TokenSkipReason.ServiceAccountUnknown,
            "it runs in ServiceAccount token mode (KEP-4412) and the pod's ServiceAccount "
            "is not known here (pullmedic diagnose: --service-account NAMESPACE/NAME)",
        )
    if not identity.service_account:
        if attrs.require_service_account:
            return TokenModeSkip(
                TokenSkipReason.NoServiceAccount,
                "the pod has no ServiceAccount and the provider sets requireServiceAccount: "
                "true, so the kubelet does not run it",
            )
        return TokenMode(attrs.audience, None)
    if account is None:
        return TokenModeSkip(
            TokenSkipReason.ServiceAccountNotFound,
            f"the pod's ServiceAccount {identity.account} does not exist, so the kubelet "
            "cannot mint its token and does not run the plugin",
        )
    annotations: dict[str, str] = {}
    for key in attrs.required_annotation_keys:
        if key not in account.annotations:
            return TokenModeSkip(
                TokenSkipReason.RequiredAnnotationMissing,
                f"the ServiceAccount {identity.account} lacks the annotation {key} the "
                "provider requires (requiredServiceAccountAnnotationKeys), so the kubelet "
                "does not run it",
            )
        annotations[key] = account.annotations[key]
    for key in attrs.optional_annotation_keys:
        if key in account.annotations:
            annotations[key] = account.annotations[key]
    return TokenMode(attrs.audience, account, annotations)


def token_request(
    audience: str,
    identity: PodIdentity,
    service_account_uid: str = "",
    expiration_seconds: int = TOKEN_EXPIRATION_SECONDS,
) -> dict[str, object]:
    """The TokenRequest the kubelet makes: the provider's audience, bound to the pod by
    name and uid (when the pod exists), the ServiceAccount's uid as a precondition."""
    spec: dict[str, object] = {
        "audiences": [audience],
        "expirationSeconds": expiration_seconds,
    }
    if identity.pod_name and identity.pod_uid:
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": identity.pod_name,
            "uid": identity.pod_uid,
        }
    doc: dict[str, object] = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": spec,
    }
    if service_account_uid:
        doc["metadata"] = {"uid": service_account_uid}
    return doc


def _length_prefixed(*parts: str) -> bytes:
    out = bytearray()
    for p in parts:
        b = p.encode()
        out += struct.pack(">H", len(b)) + b
    return bytes(out)


def _annotations_part(annotations: Mapping[str, str]) -> bytes:
    out = bytearray(struct.pack(">I", len(annotations)))
    for k in sorted(annotations):
        out += _length_prefixed(k, annotations[k])
    return bytes(out)


def token_hash(token: str) -> str:
    """The kubelet's getHashIfNotEmpty: the token itself is never part of a key."""
    return f"sha256:{hashlib.sha256(token.encode()).hexdigest()}" if token else ""


def service_account_cache_key(mode: TokenMode, cache_type: str, token: str = "") -> str:
    """The ServiceAccount part of the kubelet's cache key in token mode
    (generateServiceAccountCacheKey): namespace, name, uid and the annotations sent; with
    ``cacheType: Token`` also the token's hash, so each token gets its own entry. Empty
    when the plugin runs without a ServiceAccount (the plain cache keys apply)."""
    if mode.account is None:
        return ""
    a = mode.account
    key = _length_prefixed(a.namespace, a.name, a.uid) + _annotations_part(mode.annotations)
    if cache_type == "Token":
        key += _length_prefixed("token", token_hash(token))
    return hashlib.sha256(key).hexdigest()  # fixed size; the parts never print


def echoes_token(response: PluginResponse, token: str, cache_type: str) -> bool:
    """The kubelet discards a response whose password is the token itself unless
    ``cacheType`` is Token (the credential would outlive the token in the cache)."""
    return bool(token) and cache_type != "Token" and any(a.password == token for a in response.auth)
