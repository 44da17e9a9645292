"""What a diagnosis says: the cause of a pull failure, how sure, the evidence, the fix.

Values only, shared by everything that reports a diagnosis (status, Events, metrics,
``explain``); how an observation becomes one is :mod:`pullmedic.core.conclusion`.
Evidence names which credential was used, never its content.
"""

from __future__ import annotations

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
# Causes a copy of the same image elsewhere fixes (verified whole there first): remediation
# switches to a mirror for them, admission's Mutate mode rewrites to one.
MIRROR_CAUSES = frozenset({Cause.RegistryUnreachable, Cause.RateLimited, Cause.ImageIncomplete})


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


def secret_evidence(problems: Sequence[tuple[str, str]]) -> tuple[Evidence, ...]:
    """What is wrong in each pull secret, by name (never its content)."""
    return tuple(Evidence("secret", note=f"{name}: {reason}") for name, reason in problems)


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
