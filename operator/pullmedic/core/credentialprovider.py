"""The kubelet's credential provider configuration, as data: which plugin serves which image.

On EKS, GKE and AKS the nodes pull from the cloud's registry with exec plugins the
kubelet runs (``--image-credential-provider-config`` / ``--image-credential-provider-bin-dir``),
not with pull secrets. To probe "with exactly the credentials the kubelet would use"
pullmedic reads the same ``CredentialProviderConfig`` and runs the same plugins
(``probe/plugins.py`` runs them; the messages and the cache are :mod:`providerexchange`,
ServiceAccount token mode is :mod:`tokenmode`):

- ``parse_config``: ``kubelet.config.k8s.io/v1`` ``CredentialProviderConfig``, validated as
  the kubelet validates it (pkg/credentialprovider/plugin/config.go);
- ``ProviderSpec.matches``: ``matchImages`` with the keyring's glob rules (``*`` is one DNS
  label, ports must be equal, a path is a prefix).

Errors are typed (``ProviderConfigError``) and never quote secret material.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Final

from pullmedic.core.reference import ImageReference
from pullmedic.core.registrykeys import normalize_key, pattern_matches

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


def show(value: object) -> str:
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
        raise ValueError(f"duration {show(text)} is not a string")
    s = text
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {show(text)}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {show(text)}")
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
            f"{where}.name {show(name)} must be a plain file name in the plugin directory"
        )
    where = f"provider {show(name)}"
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
            f"{where}: apiVersion {show(api_version)} is not one the kubelet speaks "
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
        raise ProviderConfigError(f"kind is {show(kind)}, expected CredentialProviderConfig")
    api = doc.get("apiVersion")
    if not isinstance(api, str) or not api.startswith("kubelet.config.k8s.io/"):
        raise ProviderConfigError(f"apiVersion is {show(api)}, expected {CONFIG_API_VERSION}")
    raw = doc.get("providers")
    if not isinstance(raw, list) or not raw:
        raise ProviderConfigError("providers: at least one provider is required")
    providers = tuple(_provider(p, i) for i, p in enumerate(raw))
    names = [p.name for p in providers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ProviderConfigError(f"providers: duplicate name {show(dup[0])}")
    return providers
