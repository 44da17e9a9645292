"""What one probe of one image saw, in plain data: the input of a conclusion.

The prober fills it step by step (ping, token, manifest, tags, platform, blobs); the
rules that read it are :mod:`pullmedic.core.conclusion`. It carries its own timestamp, so
concluding needs no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from pullmedic.core.diagnosis import Evidence

AuthScheme: TypeAlias = Literal["none", "basic", "bearer", "unknown"]
FailureKind: TypeAlias = Literal[
    "dns", "connect", "tls", "timeout", "reset", "5xx", "protocol", "oversized", "blocked"
]


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
