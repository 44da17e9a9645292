"""Suggested fixes, verified before they are offered.

A proposed tag must exist and carry the wanted platform; a proposed secret must
authenticate and grant pull. Both are checked with real probes (cached like any other).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping

from pullmedic.core.conclusion import conclude
from pullmedic.core.diagnosis import (
    Cause,
    Diagnosis,
    Evidence,
    Fix,
    merge_evidence,
)
from pullmedic.core.keyring import Credential, Keyring
from pullmedic.core.observation import Observation
from pullmedic.core.platforms import Platform
from pullmedic.core.policy import TagCorrection, TagStrategy
from pullmedic.core.reference import ImageReference
from pullmedic.core.tags import ClosestMatch, HighestPatch, SemverRange, Strategy, rank_tags
from pullmedic.probe.probing import ProbeResult

ProbeFn = Callable[[ImageReference, Credential | None, Platform], Awaitable[ProbeResult]]
TagsFn = Callable[[ImageReference, Credential | None], Awaitable[tuple[tuple[str, ...], int]]]


class Suggestions:
    """Finds a verified tag or pull secret for a diagnosis that calls for one."""

    def __init__(
        self, probe: ProbeFn, tags: TagsFn, default_strategy: Strategy, max_checked: int
    ) -> None:
        self._probe = probe
        self._tags = tags
        self.default_strategy = default_strategy
        self.max_checked = max_checked

    async def tag(
        self,
        diag: Diagnosis,
        ref: ImageReference,
        cred: Credential | None,
        platform: Platform,
        probe: ProbeResult,
        tag_policy: TagCorrection | None = None,
    ) -> Diagnosis:
        tags = probe.tags
        if not tags:
            tags, _status = await self._tags(ref, cred)
        if not tags or ref.tag is None:
            return diag
        try:
            strategy = strategy_for(tag_policy, self.default_strategy)
        except ValueError as exc:
            note = Evidence("suggestion", note=f"tag policy unusable: {exc}")
            return dataclasses.replace(diag, evidence=(*diag.evidence, note))
        ranked = rank_tags(
            ref.tag,
            tags,
            strategy,
            allow_latest=bool(tag_policy and tag_policy.allow_latest),
            allow_major_change=bool(tag_policy and tag_policy.allow_major_change),
            limit=self.max_checked,
        )
        checked: list[Evidence] = []
        for cand in ranked:
            alt = ref.with_tag(cand.tag)
            result = await self._probe(alt, cred, platform)
            o = result.observation
            ok = o.manifest_status == 200 and o.platform_matched is True
            checked.append(
                Evidence(
                    "suggestion",
                    note=f"candidate {cand.tag}: "
                    + ("verified" if ok else why_not(o, str(platform))),
                )
            )
            if ok:
                fix = Fix(
                    kind="tag",
                    image=str(alt),
                    digest=o.digest,
                    reason=f"{cand.reason}; verified to exist for {platform}",
                )
                return dataclasses.replace(diag, fix=fix, evidence=diag.evidence + tuple(checked))
        return dataclasses.replace(diag, evidence=diag.evidence + tuple(checked))

    async def secret(
        self,
        diag: Diagnosis,
        ref: ImageReference,
        platform: Platform,
        candidates: Mapping[str, Keyring],
    ) -> Diagnosis:
        notes: list[Evidence] = []
        not_found: tuple[str, Diagnosis] | None = None
        for name, keyring in candidates.items():
            for cred in keyring.lookup(ref):
                result = await self._probe(ref, cred, platform)
                o = result.observation
                if o.manifest_status == 200:
                    notes.append(Evidence("suggestion", note=f"secret {name}: grants pull"))
                    fix = Fix(
                        kind="secret",
                        secret=name,
                        reason=f"authenticates to {ref.registry_host} and grants pull on "
                        f"{ref.path} (verified)",
                    )
                    if diag.cause is Cause.NotFoundOrPrivate:
                        return dataclasses.replace(
                            diag,
                            cause=Cause.AuthenticationRequired,
                            confidence="high",
                            summary=f"{ref.registry_host}/{ref.path} is private and the pod "
                            f"has no working credentials for it; pull secret {name} grants "
                            "access - add it to the pod's imagePullSecrets or ServiceAccount.",
                            fix=fix,
                            evidence=diag.evidence + tuple(notes),
                        )
                    return dataclasses.replace(diag, fix=fix, evidence=diag.evidence + tuple(notes))
                c = conclude(o)
                notes.append(Evidence("suggestion", note=f"secret {name}: {c.cause}"))
                if (
                    not_found is None
                    and c.cause
                    in (Cause.RepositoryNotFound, Cause.TagNotFound, Cause.DigestNotFound)
                    and c.confidence == "high"
                ):
                    not_found = (name, c)
        if not_found is not None and diag.cause is Cause.NotFoundOrPrivate:
            name, c = not_found
            return dataclasses.replace(
                c,
                image=diag.image,
                summary=c.summary.rstrip(".") + f" (confirmed with candidate secret {name}).",
                evidence=merge_evidence([diag.evidence, c.evidence, notes]),
            )
        return dataclasses.replace(diag, evidence=diag.evidence + tuple(notes))


def strategy_for(tag_policy: TagCorrection | None, default: Strategy) -> Strategy:
    """The tag-ranking strategy a policy asks for (ValueError on a bad range)."""
    if tag_policy is None:
        return default
    if tag_policy.strategy is TagStrategy.SEMVER_RANGE and tag_policy.range:
        return SemverRange(tag_policy.range)
    if tag_policy.strategy is TagStrategy.CLOSEST_MATCH:
        return ClosestMatch()
    return HighestPatch()


def why_not(o: Observation, platform: str) -> str:
    """Why a candidate tag was not offered, for the evidence."""
    if o.manifest_status == 200 and o.platform_matched is False:
        return f"no {platform} variant"
    if o.manifest_status == 200:
        return "platform could not be checked"
    if o.failure:
        return f"probe failed ({o.failure})"
    if o.rate_limited:
        return "rate limited"
    return f"manifest answered {o.manifest_status}"
