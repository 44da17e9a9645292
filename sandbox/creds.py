"""The kubelet's pull-secret keyring, for the node emulator only.

Follows pkg/credentialprovider (``MakeDockerKeyring``, ``BasicDockerKeyring``,
``URLsMatch``): keys normalised to host + path, most specific first, glob host labels,
identical ports, path prefix, the ``index.docker.io`` fallback for Docker Hub images; a
secret the kubelet cannot decode fails every pull of the pod. Written separately from the
operator's keyring so the emulator does not share the operator's mistakes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from sandbox.imageref import Reference


class SecretUnreadable(ValueError):
    """The kubelet's json.Unmarshal failed: the pull fails with this text."""


@dataclass(frozen=True)
class PullSecret:
    namespace: str
    name: str
    type: str
    data: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = field(repr=False)


def _decode_auth(value: str) -> tuple[str, str]:
    """``decodeDockerConfigFieldAuth``: padded or unpadded base64 of ``user:password``."""
    try:
        if value.strip().endswith("="):
            raw = base64.b64decode(value, validate=True)
        else:
            raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        # Go names the offending byte; the emulator does not track it.
        raise SecretUnreadable("illegal base64 data at input byte 0") from None
    user, colon, password = raw.decode("utf-8", "replace").partition(":")
    if not colon:
        raise SecretUnreadable(
            "unable to parse auth field, must be formatted as base64(username:password)"
        )
    return user, password


def _field(entry: dict[str, Any], name: str) -> str:
    """Go's encoding/json matches struct fields case-insensitively."""
    value: Any = entry.get(name)
    if value is None:
        value = next((v for k, v in entry.items() if k.lower() == name), None)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SecretUnreadable(f"json: cannot unmarshal into Go struct field {name} of string")
    return value


def _entries(doc: Any) -> dict[str, Credential]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SecretUnreadable("json: cannot unmarshal into Go value of type map")
    out: dict[str, Credential] = {}
    for loc, entry in doc.items():
        entry = entry or {}
        if not isinstance(entry, dict):
            raise SecretUnreadable("json: cannot unmarshal into Go value of type struct")
        user, password = _field(entry, "username"), _field(entry, "password")
        auth = _field(entry, "auth")
        if auth:
            user, password = _decode_auth(auth)
        out[loc] = Credential(user, password)
    return out


def _go_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` for one host label: ``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\``.

    A malformed pattern matches nothing (Go returns an error, the kubelet treats it as no).
    """
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 == len(pattern):
                return False
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1 or end == i + 1:
                return False
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            if not body:
                return False
            out.append("[" + ("^" if negate else "") + re.sub(r"([\\\]^])", r"\\\1", body) + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.fullmatch("".join(out), name) is not None


def _split(url: str) -> tuple[str, str]:
    """(host[:port], path) like Go's url.Parse: ``?`` and ``#`` end the path, brackets are
    allowed anywhere in the host (Python's urlsplit insists on an IPv6 address there)."""
    rest = url.split("://", 1)[1]
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    netloc, slash, path = rest.partition("/")
    return netloc.rpartition("@")[2], slash + path


def _key(loc: str) -> str | None:
    value = loc if loc.startswith(("https://", "http://")) else "https://" + loc
    netloc, path = _split(value)
    if any(c in netloc for c in "\\ \t\n"):  # Go's url.Parse rejects these hosts
        return None
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return netloc + path if path and path != "/" else netloc


def _host_port(netloc: str) -> tuple[str, str]:
    host, colon, port = netloc.rpartition(":")
    if colon and port.isdigit() and "]" not in port:
        return host.strip("[]"), port
    return netloc, ""


def _matches(key: str, image: str) -> bool:
    """``URLsMatchStr``: same port, same number of host labels each matching as a glob,
    the key's path a prefix of the image's."""
    (gnet, gpath), (tnet, tpath) = _split("https://" + key), _split("https://" + image)
    (ghost, gport), (thost, tport) = _host_port(gnet), _host_port(tnet)
    if gport != tport:
        return False
    gparts, tparts = ghost.split("."), thost.split(".")
    if len(gparts) != len(tparts):
        return False
    if not all(_go_match(g, t) for g, t in zip(gparts, tparts, strict=True)):
        return False
    return tpath.startswith(gpath)


def _docker_hub(name: str) -> bool:
    first, slash, _ = name.partition("/")
    if not first:
        return False
    if not slash or first in ("docker.io", "index.docker.io"):
        return True
    return not any(c in first for c in ".:")


class Keyring:
    def __init__(self) -> None:
        self.creds: dict[str, list[Credential]] = {}

    @classmethod
    def from_secrets(cls, secrets: list[PullSecret]) -> Keyring:
        """``MakeDockerKeyring``; raises SecretUnreadable as the kubelet fails the pull."""
        ring = cls()
        for s in secrets:
            if s.type == "kubernetes.io/dockerconfigjson" and s.data.get(".dockerconfigjson"):
                doc = _load(s.data[".dockerconfigjson"])
                if not isinstance(doc, dict):
                    raise SecretUnreadable("json: cannot unmarshal into Go value of type struct")
                auths = next((v for k, v in doc.items() if k.lower() == "auths"), None)
                ring._add(_entries(auths))
            elif s.type == "kubernetes.io/dockercfg" and s.data.get(".dockercfg"):
                ring._add(_entries(_load(s.data[".dockercfg"])))
        return ring

    def _add(self, entries: dict[str, Credential]) -> None:
        for loc, cred in entries.items():
            key = _key(loc)
            if key is not None:
                self.creds.setdefault(key, []).append(cred)

    def lookup(self, ref: Reference) -> list[Credential]:
        """Every matching credential, most specific key first; Docker Hub's fallback last."""
        out: list[Credential] = []
        for k in sorted(self.creds, reverse=True):
            if _matches(k, ref.name):
                out.extend(self.creds[k])
        if not out and _docker_hub(ref.name):
            out = list(self.creds.get("index.docker.io", []))
        return out


def _load(encoded: str) -> Any:
    try:
        raw = base64.b64decode(encoded)
        return json.loads(raw)
    except (binascii.Error, ValueError) as e:
        raise SecretUnreadable(f"invalid character in secret data: {e.__class__.__name__}") from e
