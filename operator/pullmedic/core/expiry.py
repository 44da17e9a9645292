"""Short-lived registry tokens copied into pull secrets: expired is not the same as wrong.

An ECR authorization token lives twelve hours; copied into a pull secret it works until
then and is refused ever after, and "the registry rejected the credentials" sends people
looking for a typo. Some tokens say when they expire: an ECR password is base64 of a JSON
document with ``expiration`` (Unix seconds), a JWT has ``exp``. When the registry refused
the credential the probe used and that credential's own expiry lies in the past, the cause
is ``CredentialsExpired``, with the expiry as evidence and the durable fix named. Only the
expiry is read from the token; nothing of it is shown.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence

from pullmedic.core.diagnosis import Cause, Diagnosis, Evidence, JSONValue
from pullmedic.core.keyring import Credential

__all__ = ["expired_view", "token_expiry"]


def _b64(text: str, urlsafe: bool) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _number(doc: object, key: str) -> float | None:
    if not isinstance(doc, dict):
        return None
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def token_expiry(password: str) -> float | None:
    """When a registry token says it expires (Unix seconds), or None if it does not say."""
    if not password or len(password) > 64 * 1024:
        return None
    parts = password.split(".")
    if len(parts) == 3:  # a JWT: header.payload.signature
        raw = _b64(parts[1], urlsafe=True)
        try:
            return _number(json.loads(raw), "exp") if raw else None
        except ValueError:
            return None
    raw = _b64(password, urlsafe=False)  # an ECR token: base64 of {"expiration": ...}
    if raw is None:
        return None
    try:
        return _number(json.loads(raw), "expiration")
    except (ValueError, UnicodeDecodeError):
        return None


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expired_view(d: Diagnosis, creds: Sequence[Credential], now: float) -> Diagnosis:
    """``CredentialsRejected`` whose credential has expired becomes ``CredentialsExpired``.

    ``creds`` are the credentials the probe could have used (the label in the diagnosis
    says which one it did); ``now`` is the wall clock. Anything else is left alone: an
    unexpired or silent token that is refused is just wrong.
    """
    if d.cause is not Cause.CredentialsRejected:
        return d
    label = d.details.get("credential")
    cred = next((c for c in creds if c.source == label), None)
    if cred is None:
        return d
    expiry = token_expiry(cred.password)
    if expiry is None or expiry > now:
        return d
    where = f"pull secret {cred.secret}" if cred.secret else str(label)
    summary = (
        f"The registry refused the token in {where}: it expired at {_when(expiry)}. "
        "Short-lived registry tokens (an ECR token lives twelve hours) copied into a "
        "secret stop working when they expire; let the node's credential provider "
        "authenticate (no pull secret), or refresh the secret on a schedule."
    )
    details: dict[str, JSONValue] = dict(d.details)
    details["probeCause"] = str(d.cause)
    details["expiredAt"] = _when(expiry)
    note = Evidence("credential", note=f"token expired at {_when(expiry)}", credential=cred.source)
    return Diagnosis(
        d.image,
        Cause.CredentialsExpired,
        "high",
        summary,
        (*d.evidence, note),
        details,
        d.digest,
        d.fix,
    )
