"""The kubelet's exchange with a credential provider plugin, and its cache.

``build_request`` / ``parse_response``: ``credentialprovider.kubelet.k8s.io/v1``;
``ProviderCache``: the kubelet's cache, keyed by image, registry or globally as the
response's ``cacheKeyType`` says, for ``cacheDuration`` (or the provider's
``defaultCacheDuration`` when the response has none; an explicit zero is not cached);
``provider_failed``: what a provider that gave nothing means for a diagnosis.
``PluginResponseError`` messages never quote a response (it may hold a password).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pullmedic.core.credentialprovider import (
    GLOBAL_CACHE_KEY,
    REQUEST_API_VERSION,
    parse_duration,
    show,
)
from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause, Diagnosis, Evidence, JSONValue


class PluginResponseError(ValueError):
    """A plugin's answer the kubelet would discard (its message never quotes the answer)."""


class CacheKeyType(StrEnum):
    Image = "Image"
    Registry = "Registry"
    Global = "Global"


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
            f"the response's apiVersion is {show(got_api)}, the config says {show(api_version)}"
        )
    if doc.get("kind") != "CredentialProviderResponse":
        raise PluginResponseError(
            f"the response's kind is {show(doc.get('kind'))}, not CredentialProviderResponse"
        )
    key_type = doc.get("cacheKeyType")
    if key_type not in {t.value for t in CacheKeyType}:
        raise PluginResponseError(
            f"the response's cacheKeyType is {show(key_type)}, not Image, Registry or Global"
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
