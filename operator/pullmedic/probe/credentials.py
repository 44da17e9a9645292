"""A registry credential as the probe holds it: bound to the host it was matched for."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RegistryCredential:
    """A username/password (and optional identity token) bound to the host it was matched for.

    ``label`` names where it came from (secret and key) for evidence; it is the only part
    ever shown. ``identity`` is a one-way fingerprint used as a cache key.
    """

    username: str
    password: str = field(repr=False)
    label: str = ""
    identity_token: str | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        h = hashlib.sha256()
        for part in (self.username, self.password, self.identity_token or ""):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:24]

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()
