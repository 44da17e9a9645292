"""The kubelet's credential provider protocol, as data: config, request, response, cache.

On EKS, GKE and AKS the nodes pull from the cloud's registry with exec plugins the
kubelet runs (``--image-credential-provider-config`` / ``--image-credential-provider-bin-dir``),
not with pull secrets. To probe "with exactly the credentials the kubelet would use"
pullmedic reads the same ``CredentialProviderConfig`` and runs the same plugins
(``probe/plugins.py`` runs them; this module is the pure part):

- ``parse_config``: ``kubelet.config.k8s.io/v1`` ``CredentialProviderConfig``, validated as
  the kubelet validates it (pkg/credentialprovider/plugin/config.go);
- ``ProviderSpec.matches``: ``matchImages`` with the keyring's glob rules (``*`` is one DNS
  label, ports must be equal, a path is a prefix);
- ``build_request`` / ``parse_response``: ``credentialprovider.kubelet.k8s.io/v1``;
- ``ProviderCache``: the kubelet's cache, keyed by image, registry or globally as the
  response's ``cacheKeyType`` says, for ``cacheDuration`` (or the provider's
  ``defaultCacheDuration`` when the response has none; an explicit zero is not cached);
- ``token_mode``: KEP-4412, what the kubelet sends a provider with ``tokenAttributes`` for
  a pod's ServiceAccount (the token's audience and binding, the annotations, the cache
  key), or why it does not run the plugin at all.

Errors are typed (``ProviderConfigError``, ``PluginResponseError``) and their messages
never quote a response (it may hold a password).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause, Diagnosis, Evidence, JSONValue
from pullmedic.core.reference import ImageReference
from pullmedic.core.registrykeys import normalize_key, pattern_matches

__all__ = [
    "CONFIG_API_VERSION",
    "REQUEST_API_VERSION",
    "AuthEntry",
    "CacheKeyType",
    "PluginResponse",
    "PluginResponseError",
    "PodIdentity",
    "ProviderCache",
    "ProviderConfigError",
    "ProviderSpec",
    "ServiceAccountInfo",
    "ServiceAccounts",
    "TokenAttributes",
    "TokenMode",
    "TokenModeSkip",
    "TokenSkipReason",
    "build_request",
    "echoes_token",
    "parse_config",
    "parse_duration",
    "parse_response",
    "provider_failed",
    "service_account_cache_key",
    "token_hash",
    "token_mode",
    "token_request",
]

CONFIG_API_VERSION: Final = "kubelet.config.k8s.io/v1"
REQUEST_API_VERSION: Final = "credentialprovider.kubelet.k8s.io/v1"
# The provider apiVersions the kubelet still speaks (v1 since 1.26; tokenAttributes v1 only).
PLUGIN_API_VERSIONS: Final = frozenset(
    {
        "credentialprovider.kubelet.k8s.io/v1",
        "credentialprovider.kubelet.k8s.io/v1beta1",
        "credentialprovider.kubelet.k8s.io/v1alpha1",
    }
)
GLOBAL_CACHE_KEY: Final = "global"
_MAX_SHOWN: Final = 80


class ProviderConfigError(ValueError):
    """The CredentialProviderConfig is one the kubelet would refuse to start with."""


class PluginResponseError(ValueError):
    """A plugin's answer the kubelet would discard (its message never quotes the answer)."""


class CacheKeyType(StrEnum):
    Image = "Image"
    Registry = "Registry"
    Global = "Global"


def _show(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return json.dumps(text, ensure_ascii=True)


# ---- durations (Go's time.ParseDuration, as metav1.Duration decodes them) ---------------

_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (``"12h"``, ``"1h30m"``, ``"0s"``, ``"0"``).

    Raises ValueError on anything ``time.ParseDuration`` refuses.
    """
    if not isinstance(text, str):
        raise ValueError(f"duration {_show(text)} is not a string")
    s = text
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {_show(text)}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {_show(text)}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


# ---- the config -------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenAttributes:
    """KEP-4412: the plugin gets the pod's ServiceAccount token for this audience."""

    audience: str
    require_service_account: bool
    cache_type: str = ""
    required_annotation_keys: tuple[str, ...] = ()
    optional_annotation_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderSpec:
    """One ``providers[]`` entry; ``env`` values may be secrets, so they never print."""

    name: str
    match_images: tuple[str, ...]
    default_cache_duration: float
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    token_attributes: TokenAttributes | None = None

    def matches(self, image: ImageReference) -> bool:
        """The kubelet's isImageAllowed: some ``matchImages`` pattern matches the image."""
        return any(pattern_matches(p, image) for p in self.match_images)

    @property
    def label(self) -> str:
        return f"credential provider {self.name}"


def _list_of_strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProviderConfigError(f"{where} must be a list of strings")
    return tuple(value)


def _token_attributes(raw: object, where: str, api_version: str) -> TokenAttributes | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProviderConfigError(f"{where}.tokenAttributes must be an object")
    if api_version != REQUEST_API_VERSION:
        raise ProviderConfigError(f"{where}.tokenAttributes needs apiVersion {REQUEST_API_VERSION}")
    audience = raw.get("serviceAccountTokenAudience")
    if not isinstance(audience, str) or not audience.strip():
        raise ProviderConfigError(
            f"{where}.tokenAttributes.serviceAccountTokenAudience is required"
        )
    require = raw.get("requireServiceAccount")
    if not isinstance(require, bool):
        raise ProviderConfigError(
            f"{where}.tokenAttributes.requireServiceAccount is required (true or false)"
        )
    cache_type = raw.get("cacheType", "")
    if not isinstance(cache_type, str) or cache_type not in ("", "Token", "ServiceAccount"):
        raise ProviderConfigError(
            f"{where}.tokenAttributes.cacheType must be Token or ServiceAccount"
        )
    required = _list_of_strings(
        raw.get("requiredServiceAccountAnnotationKeys"),
        f"{where}.tokenAttributes.requiredServiceAccountAnnotationKeys",
    )
    optional = _list_of_strings(
        raw.get("optionalServiceAccountAnnotationKeys"),
        f"{where}.tokenAttributes.optionalServiceAccountAnnotationKeys",
    )
    if set(required) & set(optional):
        raise ProviderConfigError(
            f"{where}.tokenAttributes: an annotation key is both required and optional"
        )
    if required and not require:
        raise ProviderConfigError(
            f"{where}.tokenAttributes: requiredServiceAccountAnnotationKeys needs "
            "requireServiceAccount: true"
        )
    return TokenAttributes(audience, require, cache_type, required, optional)


def _provider(raw: object, i: int) -> ProviderSpec:
    where = f"providers[{i}]"
    if not isinstance(raw, dict):
        raise ProviderConfigError(f"{where} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProviderConfigError(f"{where}.name is required")
    if "/" in name or " " in name or name in (".", ".."):
        raise ProviderConfigError(
            f"{where}.name {_show(name)} must be a plain file name in the plugin directory"
        )
    where = f"provider {_show(name)}"
    patterns = _list_of_strings(raw.get("matchImages"), f"{where}: matchImages")
    if not patterns:
        raise ProviderConfigError(f"{where}: matchImages is required")
    for p in patterns:
        try:
            normalize_key(p)
        except ValueError as exc:
            raise ProviderConfigError(f"{where}: matchImages entry is invalid: {exc}") from None
    raw_duration = raw.get("defaultCacheDuration")
    if raw_duration is None:
        raise ProviderConfigError(f"{where}: defaultCacheDuration is required")
    try:
        duration = parse_duration(raw_duration)
    except ValueError as exc:
        raise ProviderConfigError(f"{where}: defaultCacheDuration: {exc}") from None
    if duration < 0:
        raise ProviderConfigError(f"{where}: defaultCacheDuration must not be negative")
    api_version = raw.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        raise ProviderConfigError(f"{where}: apiVersion is required")
    if api_version not in PLUGIN_API_VERSIONS:
        raise ProviderConfigError(
            f"{where}: apiVersion {_show(api_version)} is not one the kubelet speaks "
            f"({', '.join(sorted(PLUGIN_API_VERSIONS))})"
        )
    args = _list_of_strings(raw.get("args"), f"{where}: args")
    env_raw = raw.get("env") or []
    if not isinstance(env_raw, list):
        raise ProviderConfigError(f"{where}: env must be a list of {{name, value}}")
    env: list[tuple[str, str]] = []
    for e in env_raw:
        if (
            not isinstance(e, dict)
            or not isinstance(e.get("name"), str)
            or not e.get("name")
            or not isinstance(e.get("value", ""), str)
        ):
            raise ProviderConfigError(f"{where}: env entries need a name and a string value")
        env.append((e["name"], e.get("value", "")))
    return ProviderSpec(
        name=name,
        match_images=patterns,
        default_cache_duration=duration,
        api_version=api_version,
        args=args,
        env=tuple(env),
        token_attributes=_token_attributes(raw.get("tokenAttributes"), where, api_version),
    )


def parse_config(doc: object) -> tuple[ProviderSpec, ...]:
    """The providers of a decoded CredentialProviderConfig (YAML or JSON, decoded by the
    caller), validated as the kubelet validates it; ProviderConfigError otherwise."""
    if not isinstance(doc, dict):
        raise ProviderConfigError("the config must be an object (CredentialProviderConfig)")
    kind = doc.get("kind")
    if kind != "CredentialProviderConfig":
        raise ProviderConfigError(f"kind is {_show(kind)}, expected CredentialProviderConfig")
    api = doc.get("apiVersion")
    if not isinstance(api, str) or not api.startswith("kubelet.config.k8s.io/"):
        raise ProviderConfigError(f"apiVersion is {_show(api)}, expected {CONFIG_API_VERSION}")
    raw = doc.get("providers")
    if not isinstance(raw, list) or not raw:
        raise ProviderConfigError("providers: at least one provider is required")
    providers = tuple(_provider(p, i) for i, p in enumerate(raw))
    names = [p.name for p in providers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ProviderConfigError(f"providers: duplicate name {_show(dup[0])}")
    return providers


# ---- request and response ---------------------------------------------------------------


def build_request(
    image: str,
    api_version: str = REQUEST_API_VERSION,
    *,
    service_account_token: str | None = None,
    service_account_annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The CredentialProviderRequest the kubelet writes to the plugin's stdin."""
    doc: dict[str, object] = {
        "kind": "CredentialProviderRequest",
        "apiVersion": api_version,
        "image": image,
    }
    if service_account_token:
        doc["serviceAccountToken"] = service_account_token
    if service_account_annotations:
        doc["serviceAccountAnnotations"] = dict(service_account_annotations)
    return json.dumps(doc).encode()


@dataclass(frozen=True)
class AuthEntry:
    """One ``auth`` entry: a match pattern and its credential (the password never prints)."""

    pattern: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class PluginResponse:
    cache_key_type: CacheKeyType
    cache_duration: float | None  # None: use the provider's defaultCacheDuration
    auth: tuple[AuthEntry, ...] = field(repr=False)


def parse_response(raw: bytes | str, api_version: str) -> PluginResponse:
    """A plugin's stdout as the kubelet reads it; PluginResponseError when it would discard it.

    The apiVersion must be the one configured for the provider; ``kind``
    CredentialProviderResponse; ``cacheKeyType`` Image, Registry or Global.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PluginResponseError("the plugin's output is not a JSON document") from None
    if not isinstance(doc, dict):
        raise PluginResponseError("the plugin's output is not a JSON object")
    got_api = doc.get("apiVersion")
    if got_api != api_version:
        raise PluginResponseError(
            f"the response's apiVersion is {_show(got_api)}, the config says {_show(api_version)}"
        )
    if doc.get("kind") != "CredentialProviderResponse":
        raise PluginResponseError(
            f"the response's kind is {_show(doc.get('kind'))}, not CredentialProviderResponse"
        )
    key_type = doc.get("cacheKeyType")
    if key_type not in {t.value for t in CacheKeyType}:
        raise PluginResponseError(
            f"the response's cacheKeyType is {_show(key_type)}, not Image, Registry or Global"
        )
    duration: float | None = None
    raw_duration = doc.get("cacheDuration")
    if raw_duration is not None:
        try:
            duration = parse_duration(raw_duration)
        except ValueError:
            raise PluginResponseError("the response's cacheDuration is not a duration") from None
    auth_raw = doc.get("auth") or {}
    if not isinstance(auth_raw, dict):
        raise PluginResponseError("the response's auth is not an object")
    entries: list[AuthEntry] = []
    for pattern, cred in auth_raw.items():
        if not isinstance(cred, dict):
            raise PluginResponseError("an auth entry is not an object")
        user, password = cred.get("username", ""), cred.get("password", "")
        if not isinstance(user, str) or not isinstance(password, str):
            raise PluginResponseError("an auth entry's username or password is not a string")
        entries.append(AuthEntry(pattern, user, password))
    return PluginResponse(CacheKeyType(key_type), duration, tuple(entries))


# ---- the kubelet's cache ----------------------------------------------------------------


def registry_of(image: str) -> str:
    """The kubelet's parseRegistry: everything before the first ``/``."""
    return image.split("/", 1)[0]


class ProviderCache:
    """One provider's cache of responses, with the kubelet's keys and expiry.

    ``put`` stores under the image, its registry or ``global`` per ``cacheKeyType``; ``get``
    looks in that order. ``sa_key`` separates ServiceAccounts in token mode.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, PluginResponse]] = {}

    def get(self, image: str, sa_key: str = "") -> PluginResponse | None:
        now = self._clock()
        for base in (image, registry_of(image), GLOBAL_CACHE_KEY):
            hit = self._entries.get((base, sa_key))
            if hit is None:
                continue
            if now > hit[0]:
                del self._entries[(base, sa_key)]
                continue
            return hit[1]
        return None

    def put(
        self,
        image: str,
        response: PluginResponse,
        default_duration: float,
        sa_key: str = "",
    ) -> float | None:
        """Store ``response`` as the kubelet would; returns its expiry, None if not cached."""
        duration = response.cache_duration
        if duration is None:
            duration = default_duration
        if duration <= 0:
            return None
        base = {
            CacheKeyType.Image: image,
            CacheKeyType.Registry: registry_of(image),
            CacheKeyType.Global: GLOBAL_CACHE_KEY,
        }[response.cache_key_type]
        expires = self._clock() + duration
        self._entries[(base, sa_key)] = (expires, response)
        return expires

    def __len__(self) -> int:
        return len(self._entries)


# ---- what a failed provider means for a diagnosis ---------------------------------------


def provider_failed(d: Diagnosis, failures: Sequence[tuple[str, str]]) -> Diagnosis:
    """A credential diagnosis made while a matching provider gave no credentials.

    The kubelet logs a failed plugin and pulls without its credentials, so the registry's
    "unauthorized" is a symptom: the cause is the provider (its binary, config or cloud
    identity), and a pull secret is not the fix. ``failures`` are (provider, reason) with
    reasons that quote no plugin output. Other causes are left alone (the pod's own
    secrets may have been enough, or the registry failed for everyone).
    """
    if d.cause not in CREDENTIAL_CAUSES or not failures:
        return d
    name, reason = failures[0]
    summary = (
        f"The credential provider {name} gave no credentials for {d.image} ({reason}), so "
        f"the pull goes without them and the registry answers {d.cause}; fix the provider "
        "(its binary, its config, or the cloud identity it runs with). pullmedic ran it with "
        "the node's configuration: if the node's own run works, compare their identities."
    )
    details: dict[str, JSONValue] = dict(d.details)
    details["probeCause"] = str(d.cause)
    details["credentialProvider"] = name
    details["providerError"] = reason
    notes = tuple(Evidence("credential-provider", note=f"{n}: {r}") for n, r in failures)
    return Diagnosis(
        d.image,
        Cause.CredentialProviderFailed,
        "medium",
        summary,
        notes + d.evidence,
        details,
        d.digest,
    )


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
