"""Turn what a registry probe saw into one honest, actionable cause.

Pure: no I/O, no clock reads (the observation carries its own timestamp), so every rule
is table-tested. :func:`conclude` asks one phase after another, from the most to the
least certain: the reference, whether the registry could be asked at all, its token
service, then what the manifest request said (present, missing, refused). The hard
rule lives in :func:`_missing`: "not found" is only claimed when the 404 came from a
request the registry actually authorised (open registry, accepted Basic credentials,
or a token that grants pull); registries hide private repositories behind 401, so
anything weaker is reported as ``NotFoundOrPrivate``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TypeAlias

from pullmedic.core.diagnosis import (
    Cause,
    Confidence,
    Diagnosis,
    JSONValue,
    secret_evidence,
)
from pullmedic.core.observation import Observation


def _where(obs: Observation) -> str:
    return f"{obs.registry_host}/{obs.repository}" if obs.repository else obs.registry_host


def _ref_text(obs: Observation) -> str:
    sep = "@" if obs.is_digest else ":"
    return f"{_where(obs)}{sep}{obs.manifest_ref}"


def _who(obs: Observation) -> str:
    return obs.credential if obs.credential else "anonymous access"


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


class _Say:
    """Builds the diagnoses of one observation: its image, evidence, digest and the
    details every cause carries (registry, credential, platform)."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.base: dict[str, JSONValue] = {}
        if obs.registry_host:
            self.base["registry"] = obs.registry_host
        if obs.credential:
            self.base["credential"] = obs.credential
        if obs.wanted_platform:
            self.base["platform"] = obs.wanted_platform

    def __call__(
        self, cause: Cause, conf: Confidence, summary: str, **extra: JSONValue
    ) -> Diagnosis:
        details = dict(self.base)
        details.update({k: v for k, v in extra.items() if v is not None})
        obs = self.obs
        return Diagnosis(obs.image, cause, conf, summary, obs.evidence, details, obs.digest)

    def malformed_secret(self) -> Diagnosis:
        """Credentials were needed and a pull secret the pod lists cannot be used."""
        obs = self.obs
        name, reason = obs.secret_problems[0]
        details = dict(self.base)
        details["malformedSecrets"] = ", ".join(sorted({n for n, _ in obs.secret_problems}))
        return Diagnosis(
            obs.image,
            Cause.MalformedSecret,
            "medium",
            f"{_where(obs)} needs credentials, and pull secret {name} cannot be used "
            f"({reason}); fix that secret so it carries credentials for {obs.registry_host}.",
            obs.evidence + secret_evidence(obs.secret_problems),
            details,
        )


Phase: TypeAlias = Callable[[Observation, _Say], Diagnosis | None]


def _reference(obs: Observation, say: _Say) -> Diagnosis | None:
    """An image field the kubelet can never pull as written."""
    if obs.invalid_reason is None:
        return None
    return say(
        Cause.InvalidReference,
        "high",
        f"The image reference is not valid ({obs.invalid_reason}); correct the image "
        "field - the kubelet will never pull it as written.",
    )


def _reachability(obs: Observation, say: _Say) -> Diagnosis | None:
    """The registry could not be asked: blocked, rate-limiting, unreachable, or not one."""
    if obs.failure == "blocked":
        return say(
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
        return say(
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
        return say(
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
        return say(
            Cause.RegistryUnreachable,
            conf,
            f"Cannot reach {who}: {text}"
            + (f" ({obs.failure_detail})" if obs.failure_detail else "")
            + ". Check the registry host name, network policy and registry health.",
            failure=obs.failure,
            step=obs.failure_step,
        )
    if obs.ping_status == 404:
        return say(
            Cause.Unknown,
            "medium",
            f"{obs.registry_host} answers 404 at /v2/, so it is not a container registry; "
            "check the registry part of the image name.",
        )
    return None


def _token(obs: Observation, say: _Say) -> Diagnosis | None:
    """The token service refused or failed, so the manifest was never asked for."""
    status = obs.token_status
    if status is None or status == 200:
        return None
    if status in (401, 403):
        if obs.credential is not None:
            return say(
                Cause.CredentialsRejected,
                "high",
                f"The token service for {obs.registry_host} rejected the credentials "
                f"from {obs.credential} ({status}); update that secret's username/password.",
            )
        if obs.secret_problems:
            return say.malformed_secret()
        return say(
            Cause.NotFoundOrPrivate,
            "medium",
            f"The token service for {obs.registry_host} refused anonymous access to "
            f"{obs.repository}: it is private or does not exist, and no pull secret "
            "matches this registry.",
        )
    if status >= 500:
        return say(
            Cause.RegistryUnreachable,
            "medium",
            f"The token service for {obs.registry_host} failed ({status}); "
            "pulls cannot authenticate until it recovers.",
            failure="5xx",
            step="token",
        )
    return say(
        Cause.Unknown,
        "low",
        f"The token service for {obs.registry_host} answered {status}; "
        "could not obtain a token to probe the image.",
        step="token",
    )


def _failing(obs: Observation, say: _Say) -> Diagnosis | None:
    """The registry failed the manifest request itself."""
    status = obs.manifest_status
    if status is None or status < 500:
        return None
    return say(
        Cause.RegistryUnreachable,
        "medium",
        f"{obs.registry_host} answered {status} for the manifest; the registry is "
        "failing, retry later or use a mirror.",
        failure="5xx",
        step="manifest",
    )


def _present(obs: Observation, say: _Say) -> Diagnosis | None:
    """The manifest is there: the platform and the blobs decide whether it pulls."""
    if obs.manifest_status != 200:
        return None
    if obs.platform_matched is False:
        plats = ", ".join(obs.available_platforms) or "none"
        return say(
            Cause.PlatformMismatch,
            "high",
            f"{_ref_text(obs)} exists but has no {obs.wanted_platform} variant "
            f"(available: {plats}); use a tag built for {obs.wanted_platform} or "
            "schedule on a matching node.",
            availablePlatforms=list(obs.available_platforms),
        )
    if obs.integrity_problem is not None:
        return say(
            Cause.ImageIncomplete,
            "high",
            f"{_ref_text(obs)} is listed by {obs.registry_host} but cannot be pulled "
            f"whole: {obs.integrity_problem}. Recreating pods will not help; push the "
            "image again, or pull it from a mirror that has it whole.",
            missing=obs.integrity_problem,
        )
    checked = bool(obs.platform_matched) and obs.integrity_checked
    extra = (
        ""
        if checked
        else " (platform could not be checked)"
        if not obs.platform_matched
        else " (its blobs could not all be checked)"
    )
    return say(
        Cause.ImageAvailable,
        "high" if checked else "medium",
        f"{_ref_text(obs)} is pullable with {_who(obs)}{extra}; a failed pull was transient "
        "or node-specific.",
        availablePlatforms=list(obs.available_platforms) or None,
    )


def _missing(obs: Observation, say: _Say) -> Diagnosis | None:
    """A 404 for the manifest: "not found" only when the request was authorised."""
    if obs.manifest_status != 404:
        return None
    authorised = obs.authorised
    if authorised is False:
        return say(
            Cause.NotFoundOrPrivate,
            "medium",
            f"{_ref_text(obs)} was not found, but the token used does not grant pull on "
            f"{obs.repository}, so it may be private; check the name and the pull secret.",
        )
    conf: Confidence = "high" if authorised else "medium"
    repo_missing = (
        "NAME_UNKNOWN" in obs.manifest_codes
        or obs.tags_status == 404
        or "NAME_UNKNOWN" in obs.tags_codes
    )
    if repo_missing:
        return say(
            Cause.RepositoryNotFound,
            conf,
            f"Repository {_where(obs)} does not exist (checked with {_who(obs)}); correct "
            "the image name.",
        )
    if obs.is_digest:
        return say(
            Cause.DigestNotFound,
            conf,
            f"Digest {obs.manifest_ref} does not exist in {_where(obs)}; it was deleted "
            "or never pushed here - pin an existing digest.",
        )
    listed = obs.tags_status == 200
    return say(
        Cause.TagNotFound,
        conf if listed else "medium",
        f"Tag {obs.manifest_ref} does not exist in {_where(obs)}"
        + ("" if listed else " (the tag list could not be read to confirm the repository)")
        + "; use an existing tag.",
    )


def _refused(obs: Observation, say: _Say) -> Diagnosis | None:
    """A 401/403 for the manifest: whose credentials, if any, were refused."""
    status = obs.manifest_status
    if status not in (401, 403):
        return None
    code = f"{status}" + (f" {','.join(obs.manifest_codes)}" if obs.manifest_codes else "")
    if obs.credential is not None:
        if obs.auth_scheme == "basic":
            return say(
                Cause.CredentialsRejected,
                "high",
                f"{obs.registry_host} rejected the credentials from {obs.credential} "
                f"({code}); update that secret's username/password.",
            )
        return say(
            Cause.CredentialsRejected,
            "medium",
            f"The credentials from {obs.credential} were accepted but do not grant pull "
            f"on {obs.repository} ({code}): the account lacks access, or the repository "
            "does not exist.",
        )
    if obs.secret_problems:
        return say.malformed_secret()
    if obs.auth_scheme == "basic":
        return say(
            Cause.AuthenticationRequired,
            "high",
            f"{obs.registry_host} requires a login and no pull secret matches it; add an "
            f"imagePullSecret with credentials for {obs.registry_host}.",
        )
    return say(
        Cause.NotFoundOrPrivate,
        "medium",
        f"Anonymous access to {_where(obs)} was refused ({code}): the repository is "
        f"private or does not exist, and no pull secret matches {obs.registry_host}.",
    )


# Most certain first: a phase that answers ends the conclusion.
_PHASES: tuple[Phase, ...] = (
    _reference,
    _reachability,
    _token,
    _failing,
    _present,
    _missing,
    _refused,
)


def conclude(obs: Observation) -> Diagnosis:
    """Map one observation to a Diagnosis: the first phase with an answer gives it."""
    say = _Say(obs)
    for phase in _PHASES:
        found = phase(obs, say)
        if found is not None:
            return found
    return say(
        Cause.Unknown,
        "low",
        f"{obs.registry_host} answered {obs.manifest_status} for {_ref_text(obs)}, which "
        "does not match a known failure.",
    )
