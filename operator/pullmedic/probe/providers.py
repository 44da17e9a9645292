"""The diagnoser the node's credential sources wrap around the prober: the plugins'
credentials after the pod's own secrets, as the kubelet's keyring orders them, a failed
provider named as the cause, an expired token told from a wrong one.

:mod:`pullmedic.probe.plugins` runs the plugins; this module only composes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pullmedic.core import policy as pol
from pullmedic.core.diagnosis import Diagnosis, Evidence
from pullmedic.core.dockerconfig import SecretProblem
from pullmedic.core.expiry import expired_view
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.providerexchange import (
    provider_failed,
)
from pullmedic.core.reference import InvalidReference, parse
from pullmedic.core.registryhosts import Endpoint
from pullmedic.core.tokenmode import (
    PodIdentity,
)
from pullmedic.probe.plugins import PluginRunner, ProviderResult


class ProviderDiagnoser:
    """A diagnoser that adds the providers' credentials after the pod's own, as the
    kubelet's keyring does, and says when a provider failed or a rejected token expired
    (``core/expiry.py``)."""

    def __init__(
        self,
        inner: Any,
        runner: PluginRunner | None = None,
        hosts: Mapping[str, Endpoint] | None = None,
    ) -> None:
        self.inner = inner
        self.runner = runner
        self.hosts = dict(hosts or {})

    async def diagnose(
        self,
        image: str,
        keyring: Keyring,
        platform: Platform,
        *,
        suggest: bool = True,
        candidate_keyrings: Mapping[str, Keyring] | None = None,
        tag_policy: pol.TagCorrection | None = None,
        secret_problems: Sequence[SecretProblem] = (),
        distrust_available: bool = False,
        pod: PodIdentity | None = None,
    ) -> Diagnosis:
        """``pod``: whose pull it is (namespace, ServiceAccount, pod name and uid), for
        providers in ServiceAccount token mode; None where nobody said."""
        result = ProviderResult()
        try:
            ref = parse(image)
        except InvalidReference:
            ref = None
        if ref is not None and self.runner is not None and self.runner.matching(ref):
            result = await self.runner.credentials(ref, pod)
        merged = Keyring.union(keyring, result.keyring)
        d: Diagnosis = await self.inner.diagnose(
            image,
            merged,
            platform,
            suggest=suggest,
            candidate_keyrings=candidate_keyrings,
            tag_policy=tag_policy,
            secret_problems=secret_problems,
            distrust_available=distrust_available,
        )
        if result.failures:
            d = provider_failed(d, [(f.provider, f.reason) for f in result.failures])
        if ref is not None:
            d = expired_view(d, merged.lookup(ref), time.time())
            ep = self.hosts.get(ref.registry_host.lower()) or self.hosts.get("_default")
            if ep is not None:  # the evidence names the registry; say where it really went
                note = Evidence(
                    "registry-host",
                    note=f"requests for {ref.registry_host} went to {ep.url} (the node's "
                    "hosts.toml)",
                )
                d = dataclasses.replace(d, evidence=(*d.evidence, note))
        return d

    async def aclose(self) -> None:
        closer = getattr(self.inner, "aclose", None)
        if closer is not None:
            await closer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def describe(runner: PluginRunner) -> str:
    """One line for the startup log: which providers, for which images (no env values)."""
    return json.dumps(
        [{"name": p.name, "matchImages": list(p.match_images)} for p in runner.providers]
    )
