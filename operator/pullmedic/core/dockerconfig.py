"""A pull secret's data as the kubelet reads it: ``.dockerconfigjson`` / ``.dockercfg``
documents into registry entries, and why a secret gives no usable credential.

The kubelet's json.Unmarshal rules decide what counts as a broken document (which fails
the whole pull) and what is only skipped; messages never echo secret material.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from pullmedic.core.registrykeys import show_key

DOCKERCONFIGJSON_TYPE: Final = "kubernetes.io/dockerconfigjson"
DOCKERCONFIGJSON_KEY: Final = ".dockerconfigjson"
DOCKERCFG_TYPE: Final = "kubernetes.io/dockercfg"
DOCKERCFG_KEY: Final = ".dockercfg"

_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PullSecret:
    """A Kubernetes Secret as read from the API (``data`` values still base64)."""

    namespace: str
    name: str
    type: str
    data: Mapping[str, str] = field(repr=False)

    @property
    def ref(self) -> str:
        """``namespace/name``, the way problems and credentials name their secret."""
        return f"{self.namespace}/{self.name}"

    def __repr__(self) -> str:
        keys = sorted(self.data) if isinstance(self.data, Mapping) else []
        return (
            f"PullSecret(namespace={self.namespace!r}, name={self.name!r}, "
            f"type={self.type!r}, keys={keys!r})"
        )


@dataclass(frozen=True)
class SecretProblem:
    """Why a secret (or one entry in it) gives the kubelet no usable credential.

    ``blocks_pull`` is True when the kubelet itself fails the whole pull because of
    this secret (its JSON does not decode), not merely ignores it.
    """

    secret: str
    reason: str
    blocks_pull: bool = False


class InvalidDocument(Exception):
    """Internal: a document the kubelet's json.Unmarshal would reject (message is safe)."""


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid JSON constant {name}")


def load_json(raw: bytes | str) -> object:
    """Decode JSON like Go would accept it; the error message never quotes the input."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise InvalidDocument("is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line is not None else ""
        raise InvalidDocument(f"is not valid JSON{where}") from None


def _field(entry: Mapping[str, object], name: str) -> object:
    """Go's encoding/json field lookup: exact key preferred, else case-insensitive; last wins."""
    if name in entry:
        return entry[name]
    found: object = None
    for key, value in entry.items():
        if key.lower() == name:
            found = value
    return found


def _string_field(entry: Mapping[str, object], name: str, loc: str) -> str:
    value = _field(entry, name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidDocument(
            f"entry {show_key(loc)}: field {name!r} is {_json_type(value)}, not a string"
        )
    return value


def _decode_auth(auth: str, loc: str) -> tuple[str, str]:
    """Decode ``auth`` = base64(user:pass); padding is optional, as in the kubelet."""
    # Go's decoder skips CR/LF anywhere in the input.
    compact = auth.replace("\r", "").replace("\n", "")
    padded = auth.strip().endswith("=")
    if not padded:
        if len(compact) % 4 == 1:
            raise InvalidDocument(f"entry {show_key(loc)}: 'auth' is not valid base64")
        compact += "=" * (-len(compact) % 4)
    elif len(compact) % 4 != 0:
        raise InvalidDocument(f"entry {show_key(loc)}: 'auth' is not valid base64")
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDocument(f"entry {show_key(loc)}: 'auth' is not valid base64") from None
    # surrogateescape keeps arbitrary bytes round-trippable for the Basic header.
    text = decoded.decode("utf-8", errors="surrogateescape")
    username, colon, password = text.partition(":")
    if not colon:
        raise InvalidDocument(
            f"entry {show_key(loc)}: 'auth' must be base64 of username:password (no ':' found)"
        )
    return username, password


@dataclass(frozen=True)
class Entry:
    loc: str
    username: str
    password: str = field(repr=False)
    empty: bool


def parse_entries(doc: object, where: str) -> list[Entry]:
    """A dockercfg map {registry: {username, password, auth, ...}} -> entries (or raises
    InvalidDocument)."""
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise InvalidDocument(f"{where} is {_json_type(doc)}, expected an object of registries")
    entries: list[Entry] = []
    for loc, raw in doc.items():
        if raw is None:
            entries.append(Entry(loc, "", "", True))
            continue
        if not isinstance(raw, dict):
            raise InvalidDocument(f"entry {show_key(loc)} is {_json_type(raw)}, expected an object")
        username = _string_field(raw, "username", loc)
        password = _string_field(raw, "password", loc)
        _string_field(raw, "email", loc)
        auth = _string_field(raw, "auth", loc)
        if auth:
            username, password = _decode_auth(auth, loc)
        entries.append(Entry(loc, username, password, not auth and not username and not password))
    return entries


def parse_config_json(doc: object) -> list[Entry]:
    """A ``{"auths": {...}}`` document (config.json / .dockerconfigjson) -> entries."""
    if not isinstance(doc, dict):
        raise InvalidDocument(f"is {_json_type(doc)}, expected an object with 'auths'")
    headers = _field(doc, "httpheaders")
    if headers is not None and not (
        isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
    ):
        raise InvalidDocument("'HttpHeaders' must be an object of strings")
    auths = _field(doc, "auths")
    if auths is None:
        return []
    return parse_entries(auths, "'auths'")


def empty_reason(data_key: str, doc: object) -> str:
    """Why a decodable document gives no credentials; a missing 'auths' is the usual one."""
    if (
        data_key != DOCKERCONFIGJSON_KEY
        or not isinstance(doc, dict)
        or _field(doc, "auths") is not None
    ):
        return f"{data_key} contains no registries"
    looks_like_dockercfg = any(isinstance(v, dict) for v in doc.values())
    return f"{data_key} has no 'auths' object, so the kubelet finds no credentials in it" + (
        '; its top level looks like a .dockercfg map of registries: wrap it in {"auths": ...}'
        if looks_like_dockercfg
        else ""
    )


def expected_data_key(secret_type: str) -> str | None:
    if secret_type == DOCKERCONFIGJSON_TYPE:
        return DOCKERCONFIGJSON_KEY
    if secret_type == DOCKERCFG_TYPE:
        return DOCKERCFG_KEY
    return None
