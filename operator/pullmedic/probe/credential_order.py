"""The kubelet's credential order, so the probe pulls as the node would.

The kubelet tries each credential the keyring yields for an image in turn (anonymous
when none matches) and stops at the first that pulls; which attempt explains a failure
is chosen here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pullmedic.core.keyring import Credential
from pullmedic.core.observation import Observation
from pullmedic.probe.credentials import RegistryCredential


def attempts(creds: Sequence[Credential]) -> list[Credential | None]:
    """The credentials to try, in the kubelet's order; anonymous when none matches."""
    return [*creds] or [None]


def settles(obs: Observation) -> bool:
    """Whether an attempt ends the search: success, or the registry itself is the problem."""
    return obs.manifest_status == 200 or obs.failure is not None or obs.rate_limited


def label(cred: Credential | None) -> str | None:
    if cred is None:
        return None
    return cred.source or (f"secret {cred.secret} key {cred.key}" if cred.secret else cred.key)


def registry_credential(cred: Credential | None) -> RegistryCredential | None:
    if cred is None:
        return None
    return RegistryCredential(cred.username, cred.password, label(cred) or cred.key)


def identity(cred: Credential | None) -> str:
    """A one-way fingerprint of the credential (cache keys), "anonymous" for none."""
    rc = registry_credential(cred)
    return rc.identity if rc else "anonymous"


def choose(observations: Sequence[Observation]) -> int:
    """Which attempt's outcome explains the pull: success first, then an authorised 404
    (the most informative failure), else the first credential's (most specific)."""
    rules: tuple[Callable[[Observation], bool], ...] = (
        lambda o: o.manifest_status == 200,
        lambda o: o.manifest_status == 404 and o.authorised is True,
        lambda o: o.failure is not None or o.rate_limited,
    )
    for rule in rules:
        for i, o in enumerate(observations):
            if rule(o):
                return i
    return 0
