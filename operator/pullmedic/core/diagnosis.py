"""Turn what a registry probe saw into one honest, actionable cause.

Pure: no I/O, no clock reads (the observation carries its own timestamp), so every rule
is table-tested. The hard rule lives in :func:`conclude`: "not found" is only claimed
when the 404 came from a request the registry actually authorised (open registry,
accepted Basic credentials, or a token that grants pull); registries hide private
repositories behind 401, so anything weaker is reported as ``NotFoundOrPrivate``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, TypeAlias

JSONScalar: TypeAlias = str | int | float | bool | None
JSONValue: TypeAlias = JSONScalar | list[str] | list[int] | dict[str, str]
Confidence: TypeAlias = Literal["high", "medium", "low"]


class Cause(StrEnum):
    """Why a pull fails (or that it would not); values are stable API for status/JSON."""

    InvalidReference = "InvalidReference"
    TagNotFound = "TagNotFound"
    DigestNotFound = "DigestNotFound"  # a pinned digest: never "corrected" to another tag
    RepositoryNotFound = "RepositoryNotFound"
    NotFoundOrPrivate = "NotFoundOrPrivate"
    AuthenticationRequired = "AuthenticationRequired"
    CredentialsRejected = "CredentialsRejected"
    CredentialsExpired = "CredentialsExpired"  # rejected, and the token says it expired
    RateLimited = "RateLimited"
    RegistryUnreachable = "RegistryUnreachable"
    PlatformMismatch = "PlatformMismatch"
    ImageIncomplete = "ImageIncomplete"  # listed, but a manifest or blob cannot be served
    NodeCredentialsUnknown = "NodeCredentialsUnknown"  # the node authenticates, we cannot
    CredentialProviderFailed = "CredentialProviderFailed"  # the node's plugin gave nothing
    ImageAvailable = "ImageAvailable"
    BlockedAddress = "BlockedAddress"
    MalformedSecret = "MalformedSecret"
    Unknown = "Unknown"


# Causes a working pull secret fixes: one set, used by planning, probing and the breaker.
CREDENTIAL_CAUSES = frozenset(
    {
        Cause.AuthenticationRequired,
        Cause.CredentialsRejected,
        Cause.CredentialsExpired,
        Cause.NotFoundOrPrivate,
    }
)


FailureKind: TypeAlias = Literal[
    "dns", "connect", "tls", "timeout", "reset", "5xx", "protocol", "oversized", "blocked"
]


@dataclass(frozen=True)
class Evidence:
    """One request (or local check) the diagnosis rests on.

    Holds the method, a URL stripped of query secrets, status and registry error codes,
    and *which* credential was used (secret name and keyring key) - never its content.
    """

    kind: str
    method: str = ""
    url: str = ""
    status: int | None = None
    error_codes: tuple[str, ...] = ()
    note: str = ""
    credential: str | None = None

    def line(self) -> str:
        """A single human-readable line for CLI output and Events."""
        parts: list[str] = [self.kind]
        if self.method or self.url:
            parts.append(f"{self.method} {self.url}".strip())
        if self.status is not None:
            parts.append(f"-> {self.status}")
        if self.error_codes:
            parts.append(",".join(self.error_codes))
        if self.credential:
            parts.append(f"[as {self.credential}]")
        if self.note:
            parts.append(f"({self.note})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, JSONValue]:
        out: dict[str, JSONValue] = {"kind": self.kind}
        if self.method:
            out["method"] = self.method
        if self.url:
            out["url"] = self.url
        if self.status is not None:
            out["status"] = self.status
        if self.error_codes:
            out["errorCodes"] = list(self.error_codes)
        if self.note:
            out["note"] = self.note
        if self.credential:
            out["credential"] = self.credential
        return out


@dataclass(frozen=True)
class Fix:
    """A verified change that would make the pull succeed.

    ``kind="tag"``: use ``image`` (already checked to exist for the platform, resolving
    to ``digest``). ``kind="secret"``: add pull secret ``secret`` ("ns/name"), which was
    checked to authenticate and grant pull.
    """

    kind: Literal["tag", "secret"]
    reason: str
    image: str | None = None
    digest: str | None = None
    secret: str | None = None

    def to_dict(self) -> dict[str, JSONValue]:
        out: dict[str, JSONValue] = {"kind": self.kind, "reason": self.reason}
        if self.image is not None:
            out["image"] = self.image
        if self.digest is not None:
            out["digest"] = self.digest
        if self.secret is not None:
            out["secret"] = self.secret
        return out

    def line(self) -> str:
        if self.kind == "secret":
            return f"add imagePullSecret {self.secret}: {self.reason}"
        pinned = f" ({self.digest})" if self.digest else ""
        return f"use image {self.image}{pinned}: {self.reason}"


@dataclass(frozen=True)
class Diagnosis:
    """The answer for one image: cause, how sure, what to do, and what it rests on."""

    image: str
    cause: Cause
    confidence: Confidence
    summary: str
    evidence: tuple[Evidence, ...] = ()
    details: Mapping[str, JSONValue] = field(default_factory=dict)
    digest: str | None = None
    fix: Fix | None = None

    @property
    def pullable(self) -> bool:
        return self.cause is Cause.ImageAvailable

    def to_dict(self) -> dict[str, object]:
        return {
            "image": self.image,
            "cause": str(self.cause),
            "confidence": self.confidence,
            "summary": self.summary,
            "digest": self.digest,
            "details": dict(self.details),
            "evidence": [e.to_dict() for e in self.evidence],
            "fix": None if self.fix is None else self.fix.to_dict(),
        }


# --------------------------------------------------------------------------------------
# Observations: what the prober gathered, in plain data.
# --------------------------------------------------------------------------------------

AuthScheme: TypeAlias = Literal["none", "basic", "bearer", "unknown"]


@dataclass(frozen=True)
class Observation:
    """Everything one probe of one image with one credential (or none) saw.

    ``credential`` is a label such as ``"team-a/regcred (key registry.example.com)"``;
    ``None`` means the probe was anonymous because no pull secret matched.
    ``token_grants_pull`` is what the token's claims say (None: opaque token or none).
    """

    image: str
    registry_host: str = ""
    repository: str = ""
    manifest_ref: str = ""
    is_digest: bool = False
    invalid_reason: str | None = None
    credential: str | None = None
    auth_scheme: AuthScheme = "unknown"
    ping_status: int | None = None
    token_status: int | None = None
    token_realm: str | None = None
    token_grants_pull: bool | None = None
    manifest_status: int | None = None
    manifest_codes: tuple[str, ...] = ()
    tags_status: int | None = None
    tags_codes: tuple[str, ...] = ()
    failure: FailureKind | None = None
    failure_step: str | None = None
    failure_detail: str = ""
    rate_limited: bool = False
    retry_after: float | None = None
    ratelimit_limit: str | None = None
    ratelimit_remaining: str | None = None
    observed_at: float = 0.0
    digest: str | None = None
    media_type: str | None = None
    wanted_platform: str = ""
    platform_matched: bool | None = None
    available_platforms: tuple[str, ...] = ()
    # What the kubelet fetches after the manifest: the platform's manifest and every blob.
    # None: all present (when ``integrity_checked``) or not checked.
    integrity_problem: str | None = None
    integrity_checked: bool = False
    secret_problems: tuple[tuple[str, str], ...] = ()
    evidence: tuple[Evidence, ...] = ()

    @property
    def authorised(self) -> bool | None:
        """Did the registry treat the request as allowed to read this repository?

        True: open registry, Basic credentials accepted, or a token granting pull.
        None: a token was used but its grants are opaque.
        """
        if self.auth_scheme == "none":
            return True
        if self.auth_scheme == "basic":
            return self.credential is not None and self.manifest_status not in (401, 403)
        if self.auth_scheme == "bearer":
            return self.token_grants_pull
        return None


def _where(obs: Observation) -> str:
    return f"{obs.registry_host}/{obs.repository}" if obs.repository else obs.registry_host


def _ref_text(obs: Observation) -> str:
    sep = "@" if obs.is_digest else ":"
    return f"{_where(obs)}{sep}{obs.manifest_ref}"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_FAILURE_TEXT: Mapping[str, str] = {
    "dns": "its name does not resolve",
    "connect": "the connection was refused or could not be made",
    "tls": "the TLS handshake failed",
    "timeout": "it did not answer in time",
    "reset": "it dropped the connection",
    "5xx": "it answered with a server error",
    "protocol": "it answered with something that is not valid HTTP",
}


def secret_evidence(problems: Sequence[tuple[str, str]]) -> tuple[Evidence, ...]:
    """What is wrong in each pull secret, by name (never its content)."""
    return tuple(Evidence("secret", note=f"{name}: {reason}") for name, reason in problems)


def _secret_problem_diagnosis(obs: Observation, base: dict[str, JSONValue]) -> Diagnosis:
    name, reason = obs.secret_problems[0]
    names = ", ".join(sorted({n for n, _ in obs.secret_problems}))
    details = dict(base)
    details["malformedSecrets"] = names
    return Diagnosis(
        obs.image,
        Cause.MalformedSecret,
        "medium",
        f"{_where(obs)} needs credentials, and pull secret {name} cannot be used ({reason}); "
        f"fix that secret so it carries credentials for {obs.registry_host}.",
        obs.evidence + secret_evidence(obs.secret_problems),
        details,
    )


def conclude(obs: Observation) -> Diagnosis:
    """Map one observation to a Diagnosis. Rules are ordered from most to least certain."""
    ev = obs.evidence
    base: dict[str, JSONValue] = {}
    if obs.registry_host:
        base["registry"] = obs.registry_host
    if obs.credential:
        base["credential"] = obs.credential
    if obs.wanted_platform:
        base["platform"] = obs.wanted_platform

    def make(cause: Cause, conf: Confidence, summary: str, **extra: JSONValue) -> Diagnosis:
        details = dict(base)
        details.update({k: v for k, v in extra.items() if v is not None})
        return Diagnosis(obs.image, cause, conf, summary, ev, details, obs.digest)

    if obs.invalid_reason is not None:
        return make(
            Cause.InvalidReference,
            "high",
            f"The image reference is not valid ({obs.invalid_reason}); correct the image "
            "field - the kubelet will never pull it as written.",
        )

    if obs.failure == "blocked":
        return make(
            Cause.BlockedAddress,
            "high",
            f"Did not probe {obs.registry_host}: {obs.failure_detail}. Nodes may still reach "
            "it; add it to the address allowlist only if this registry is legitimate.",
            step=obs.failure_step,
        )

    if obs.rate_limited:
        retry_at = (
            _iso(obs.observed_at + obs.retry_after)
            if obs.retry_after is not None and obs.observed_at
            else None
        )
        when = f"; retry after {retry_at}" if retry_at else "; no Retry-After was given"
        return make(
            Cause.RateLimited,
            "high",
            f"{obs.registry_host} is rate-limiting pulls (429 Too Many Requests){when}. "
            "Authenticate, use a mirror, or wait - the image itself may be fine.",
            retryAfterSeconds=obs.retry_after,
            retryAt=retry_at,
            rateLimitLimit=obs.ratelimit_limit,
            rateLimitRemaining=obs.ratelimit_remaining,
            step=obs.failure_step,
        )

    if obs.failure == "oversized":
        return make(
            Cause.Unknown,
            "low",
            f"{obs.registry_host} sent a response larger than allowed during "
            f"{obs.failure_step or 'the probe'}; refused to read it, so the cause is unknown.",
            failure="oversized",
            step=obs.failure_step,
        )

    if obs.failure is not None:
        text = _FAILURE_TEXT.get(obs.failure, "the request failed")
        target = obs.token_realm if obs.failure_step == "token" and obs.token_realm else None
        who = f"its token service {target}" if target else obs.registry_host
        conf: Confidence = "high" if obs.failure in ("dns", "connect", "tls") else "medium"
        return make(
            Cause.RegistryUnreachable,
            conf,
            f"Cannot reach {who}: {text}"
            + (f" ({obs.failure_detail})" if obs.failure_detail else "")
            + ". Check the registry host name, network policy and registry health.",
            failure=obs.failure,
            step=obs.failure_step,
        )

    if obs.ping_status == 404:
        return make(
            Cause.Unknown,
            "medium",
            f"{obs.registry_host} answers 404 at /v2/, so it is not a container registry; "
            "check the registry part of the image name.",
        )

    who = obs.credential if obs.credential else "anonymous access"

    # The token endpoint itself refused.
    if obs.token_status is not None and obs.token_status != 200:
        if obs.token_status in (401, 403):
            if obs.credential is not None:
                return make(
                    Cause.CredentialsRejected,
                    "high",
                    f"The token service for {obs.registry_host} rejected the credentials "
                    f"from {obs.credential} ({obs.token_status}); update that secret's "
                    "username/password.",
                )
            if obs.secret_problems:
                return _secret_problem_diagnosis(obs, base)
            return make(
                Cause.NotFoundOrPrivate,
                "medium",
                f"The token service for {obs.registry_host} refused anonymous access to "
                f"{obs.repository}: it is private or does not exist, and no pull secret "
                "matches this registry.",
            )
        if obs.token_status >= 500:
            return make(
                Cause.RegistryUnreachable,
                "medium",
                f"The token service for {obs.registry_host} failed ({obs.token_status}); "
                "pulls cannot authenticate until it recovers.",
                failure="5xx",
                step="token",
            )
        return make(
            Cause.Unknown,
            "low",
            f"The token service for {obs.registry_host} answered {obs.token_status}; "
            "could not obtain a token to probe the image.",
            step="token",
        )

    status = obs.manifest_status
    if status is not None and status >= 500:
        return make(
            Cause.RegistryUnreachable,
            "medium",
            f"{obs.registry_host} answered {status} for the manifest; the registry is "
            "failing, retry later or use a mirror.",
            failure="5xx",
            step="manifest",
        )

    if status == 200:
        if obs.platform_matched is False:
            plats = ", ".join(obs.available_platforms) or "none"
            return make(
                Cause.PlatformMismatch,
                "high",
                f"{_ref_text(obs)} exists but has no {obs.wanted_platform} variant "
                f"(available: {plats}); use a tag built for {obs.wanted_platform} or "
                "schedule on a matching node.",
                availablePlatforms=list(obs.available_platforms),
            )
        if obs.integrity_problem is not None:
            return make(
                Cause.ImageIncomplete,
                "high",
                f"{_ref_text(obs)} is listed by {obs.registry_host} but cannot be pulled "
                f"whole: {obs.integrity_problem}. Recreating pods will not help; push the "
                "image again, or pull it from a mirror that has it whole.",
                missing=obs.integrity_problem,
            )
        conf2: Confidence = "high" if obs.platform_matched and obs.integrity_checked else "medium"
        extra = (
            ""
            if obs.platform_matched and obs.integrity_checked
            else " (platform could not be checked)"
            if not obs.platform_matched
            else " (its blobs could not all be checked)"
        )
        return make(
            Cause.ImageAvailable,
            conf2,
            f"{_ref_text(obs)} is pullable with {who}{extra}; a failed pull was transient "
            "or node-specific.",
            availablePlatforms=list(obs.available_platforms) or None,
        )

    if status == 404:
        authorised = obs.authorised
        repo_missing = (
            "NAME_UNKNOWN" in obs.manifest_codes
            or obs.tags_status == 404
            or "NAME_UNKNOWN" in obs.tags_codes
        )
        if authorised is False:
            return make(
                Cause.NotFoundOrPrivate,
                "medium",
                f"{_ref_text(obs)} was not found, but the token used does not grant pull on "
                f"{obs.repository}, so it may be private; check the name and the pull secret.",
            )
        conf3: Confidence = "high" if authorised else "medium"
        if repo_missing:
            return make(
                Cause.RepositoryNotFound,
                conf3,
                f"Repository {_where(obs)} does not exist (checked with {who}); correct the "
                "image name.",
            )
        if obs.is_digest:
            return make(
                Cause.DigestNotFound,
                conf3,
                f"Digest {obs.manifest_ref} does not exist in {_where(obs)}; it was deleted "
                "or never pushed here - pin an existing digest.",
            )
        listed = obs.tags_status == 200
        return make(
            Cause.TagNotFound,
            conf3 if listed else "medium",
            f"Tag {obs.manifest_ref} does not exist in {_where(obs)}"
            + ("" if listed else " (the tag list could not be read to confirm the repository)")
            + "; use an existing tag.",
        )

    if status in (401, 403):
        code = f"{status}" + (f" {','.join(obs.manifest_codes)}" if obs.manifest_codes else "")
        if obs.credential is not None:
            if obs.auth_scheme == "basic":
                return make(
                    Cause.CredentialsRejected,
                    "high",
                    f"{obs.registry_host} rejected the credentials from {obs.credential} "
                    f"({code}); update that secret's username/password.",
                )
            return make(
                Cause.CredentialsRejected,
                "medium",
                f"The credentials from {obs.credential} were accepted but do not grant pull "
                f"on {obs.repository} ({code}): the account lacks access, or the repository "
                "does not exist.",
            )
        if obs.secret_problems:
            return _secret_problem_diagnosis(obs, base)
        if obs.auth_scheme == "basic":
            return make(
                Cause.AuthenticationRequired,
                "high",
                f"{obs.registry_host} requires a login and no pull secret matches it; add an "
                f"imagePullSecret with credentials for {obs.registry_host}.",
            )
        return make(
            Cause.NotFoundOrPrivate,
            "medium",
            f"Anonymous access to {_where(obs)} was refused ({code}): the repository is "
            f"private or does not exist, and no pull secret matches {obs.registry_host}.",
        )

    return make(
        Cause.Unknown,
        "low",
        f"{obs.registry_host} answered {status} for {_ref_text(obs)}, which does not match "
        "a known failure.",
    )


def merge_evidence(parts: Sequence[Sequence[Evidence]]) -> tuple[Evidence, ...]:
    """Concatenate evidence from several probes, dropping exact repeats."""
    seen: set[Evidence] = set()
    out: list[Evidence] = []
    for part in parts:
        for item in part:
            if item not in seen:
                seen.add(item)
                out.append(item)
    return tuple(out)


# ---- the node's view ------------------------------------------------------------------

# The runtime's words for "the credentials did not grant this" and "it does not exist",
# as containerd reports them through the kubelet (supporting evidence only: the probe
# decides, this text only says what the node saw).
_NODE_DENIED = (
    "401 unauthorized",
    "403 forbidden",
    "authorization failed",
    "pull access denied",
    "failed to authorize",
    "insufficient_scope",
)
_NODE_NOT_FOUND = (": not found", "code = notfound", "manifest unknown")


def node_view(d: Diagnosis, kubelet_message: str, registry_host: str) -> Diagnosis:
    """A credential diagnosis for a registry whose credentials live on the nodes.

    The probe ran without the node's credentials, so its "unauthorized" is not the node's
    answer. What the kubelet reported is the only evidence of what the node saw.
    """
    if d.cause not in CREDENTIAL_CAUSES:
        return d
    text = kubelet_message.lower()
    quoted = kubelet_message.strip()[:300]
    if any(k in text for k in _NODE_NOT_FOUND):
        conf: Confidence = "medium"
        saw = (
            "the kubelet's pull, with the node's credentials, reports the image not found: "
            "check the image name and tag"
        )
    elif any(k in text for k in _NODE_DENIED):
        conf = "medium"
        saw = (
            "the kubelet's pull was refused too: the node's credential provider (or node "
            "config) has no valid credentials for this repository"
        )
    else:
        conf = "low"
        saw = "what the node's credentials would get is unknown"
    summary = (
        f"The probe of {d.image} without credentials got {d.cause}, but nodes provide "
        f"their own credentials for {registry_host}; {saw}."
    )
    details: dict[str, JSONValue] = dict(d.details)
    details["probeCause"] = str(d.cause)
    if quoted:
        details["kubeletMessage"] = quoted
    evidence = d.evidence + (
        (Evidence("kubelet", note=f"kubelet reported: {quoted}"),) if quoted else ()
    )
    return Diagnosis(
        d.image, Cause.NodeCredentialsUnknown, conf, summary, evidence, details, d.digest
    )


def held_by_node(d: Diagnosis, node: str) -> Diagnosis:
    """A credential failure for an image the node already holds (ensure-secret-pulled-
    images, on by default since Kubernetes 1.35): the kubelet gives a cached private image
    only to pods whose own credentials grant it, so this pod pulls, and fails, with its
    own. The credential fix is the right one; say why the cached copy did not help."""
    if d.cause not in CREDENTIAL_CAUSES:
        return d
    details: dict[str, JSONValue] = dict(d.details)
    details["imageOnNode"] = node
    summary = (
        d.summary.rstrip(".")
        + f". The image is already on node {node}, but the kubelet only lets pods whose own "
        "pull credentials grant it use a cached private image (ensure-secret-pulled-images)."
    )
    return dataclasses.replace(d, summary=summary, details=details)
