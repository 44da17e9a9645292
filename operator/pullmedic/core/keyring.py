"""The kubelet's credential keyring, rebuilt so the operator can see what a pull will send.

The kubelet turns a pod's ``imagePullSecrets`` into a keyring (pkg/credentialprovider)
and sends every credential whose registry key matches the image, most specific
first.  Most "pull access denied" incidents are a key that silently does not match
(wrong port, ``registry-1.docker.io``, a glob with the wrong label count) or a
secret the kubelet skips.  This module applies the same rules and, unlike the
kubelet, says *why* a secret or entry was unusable -- without ever echoing
secret material.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from pullmedic.core.reference import ImageReference

__all__ = [
    "DOCKERCFG_KEY",
    "DOCKERCFG_TYPE",
    "DOCKERCONFIGJSON_KEY",
    "DOCKERCONFIGJSON_TYPE",
    "Credential",
    "Keyring",
    "PullSecret",
    "SecretProblem",
    "key_matches",
    "normalize_key",
    "pattern_matches",
]

DOCKERCONFIGJSON_TYPE: Final = "kubernetes.io/dockerconfigjson"
DOCKERCONFIGJSON_KEY: Final = ".dockerconfigjson"
DOCKERCFG_TYPE: Final = "kubernetes.io/dockercfg"
DOCKERCFG_KEY: Final = ".dockercfg"

# The kubelet's Docker Hub fallback key: what "https://index.docker.io/v1/" normalises to.
DEFAULT_REGISTRY_KEY: Final = "index.docker.io"

_MAX_SHOWN_KEY: Final = 120
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9a-fA-F]{2})")
# ASCII characters Go's url.Parse accepts in a host (everything else is an error there).
_HOST_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]<>\"%"
)


@dataclass(frozen=True)
class Credential:
    """One username/password the kubelet would offer for an image; the password never prints."""

    username: str
    password: str = field(repr=False)
    source: str
    key: str
    secret: str | None = None

    def __repr__(self) -> str:
        return (
            f"Credential(username={self.username!r}, source={self.source!r}, "
            f"key={self.key!r}, password=<redacted>)"
        )

    __str__ = __repr__


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


class _Invalid(Exception):
    """Internal: a document the kubelet's json.Unmarshal would reject (message is safe)."""


def _show_key(loc: str) -> str:
    """Registry keys are addresses, not secrets, but bound and escape them anyway."""
    if len(loc) > _MAX_SHOWN_KEY:
        loc = loc[:_MAX_SHOWN_KEY] + "..."
    return json.dumps(loc, ensure_ascii=True)


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


def _load_json(raw: bytes | str) -> object:
    """Decode JSON like Go would accept it; the error message never quotes the input."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise _Invalid("is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line is not None else ""
        raise _Invalid(f"is not valid JSON{where}") from None


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
        raise _Invalid(
            f"entry {_show_key(loc)}: field {name!r} is {_json_type(value)}, not a string"
        )
    return value


def _decode_auth(auth: str, loc: str) -> tuple[str, str]:
    """Decode ``auth`` = base64(user:pass); padding is optional, as in the kubelet."""
    # Go's decoder skips CR/LF anywhere in the input.
    compact = auth.replace("\r", "").replace("\n", "")
    padded = auth.strip().endswith("=")
    if not padded:
        if len(compact) % 4 == 1:
            raise _Invalid(f"entry {_show_key(loc)}: 'auth' is not valid base64")
        compact += "=" * (-len(compact) % 4)
    elif len(compact) % 4 != 0:
        raise _Invalid(f"entry {_show_key(loc)}: 'auth' is not valid base64")
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"entry {_show_key(loc)}: 'auth' is not valid base64") from None
    # surrogateescape keeps arbitrary bytes round-trippable for the Basic header.
    text = decoded.decode("utf-8", errors="surrogateescape")
    username, colon, password = text.partition(":")
    if not colon:
        raise _Invalid(
            f"entry {_show_key(loc)}: 'auth' must be base64 of username:password (no ':' found)"
        )
    return username, password


@dataclass(frozen=True)
class _Entry:
    loc: str
    username: str
    password: str = field(repr=False)
    empty: bool


def _parse_entries(doc: object, where: str) -> list[_Entry]:
    """A dockercfg map {registry: {username, password, auth, ...}} -> entries, or _Invalid."""
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise _Invalid(f"{where} is {_json_type(doc)}, expected an object of registries")
    entries: list[_Entry] = []
    for loc, raw in doc.items():
        if raw is None:
            entries.append(_Entry(loc, "", "", True))
            continue
        if not isinstance(raw, dict):
            raise _Invalid(f"entry {_show_key(loc)} is {_json_type(raw)}, expected an object")
        username = _string_field(raw, "username", loc)
        password = _string_field(raw, "password", loc)
        _string_field(raw, "email", loc)
        auth = _string_field(raw, "auth", loc)
        if auth:
            username, password = _decode_auth(auth, loc)
        entries.append(_Entry(loc, username, password, not auth and not username and not password))
    return entries


def _parse_config_json(doc: object) -> list[_Entry]:
    """A ``{"auths": {...}}`` document (config.json / .dockerconfigjson) -> entries."""
    if not isinstance(doc, dict):
        raise _Invalid(f"is {_json_type(doc)}, expected an object with 'auths'")
    headers = _field(doc, "httpheaders")
    if headers is not None and not (
        isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
    ):
        raise _Invalid("'HttpHeaders' must be an object of strings")
    auths = _field(doc, "auths")
    if auths is None:
        return []
    return _parse_entries(auths, "'auths'")


class _BadKey(Exception):
    """Internal: a registry key Go's url.Parse would refuse (the kubelet skips it)."""


def _valid_optional_port(port: str) -> bool:
    """Go's validOptionalPort: empty, or ':' followed by digits only."""
    return port == "" or (port[0] == ":" and all("0" <= c <= "9" for c in port[1:]))


def _split_url(url: str) -> tuple[str, str]:
    """Host and (unescaped) path of an absolute URL, roughly as Go's net/url parses it."""
    if _CONTROL_RE.search(url):
        raise _BadKey("contains a control character")
    rest = url.split("#", 1)[0]
    rest = rest.split("?", 1)[0]
    _scheme, sep, rest = rest.partition("://")
    if not sep:  # pragma: no cover - callers always add a scheme
        raise _BadKey("has no scheme")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise _BadKey("has an unterminated IPv6 address")
        if not _valid_optional_port(host[end + 1 :]):
            raise _BadKey("has an invalid port")
    else:
        colon = host.rfind(":")
        if colon >= 0 and not _valid_optional_port(host[colon:]):
            raise _BadKey("has an invalid port")
    bad = next((c for c in host if c < "\x80" and c not in _HOST_CHARS), None)
    if bad is not None:
        raise _BadKey(f"has an invalid character {bad!r} in the host name")
    if _BAD_ESCAPE_RE.search(path) or _BAD_ESCAPE_RE.search(host):
        raise _BadKey("has an invalid %-escape")
    return host, unquote(path)


def normalize_key(loc: str) -> str:
    """The kubelet's key for a config entry: host + path, scheme and ``/v1/``/``/v2/`` dropped.

    Raises ValueError (with a safe message) for keys the kubelet ignores.
    """
    value = loc
    if not value.startswith(("https://", "http://")):
        value = "https://" + value
    try:
        host, path = _split_url(value)
    except _BadKey as exc:
        raise ValueError(f"registry key {_show_key(loc)} {exc}") from None
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    if path and path != "/":
        return host + path
    return host


def _split_host_port(host: str) -> tuple[list[str], str]:
    """Go's net.SplitHostPort, falling back to (host, "") when it would fail."""
    parts: tuple[str, str] | None = None
    if host.startswith("["):
        end = host.find("]")
        if end >= 0 and host[end + 1 : end + 2] == ":":
            parts = (host[1:end], host[end + 2 :])
    else:
        colon = host.rfind(":")
        if colon >= 0 and ":" not in host[:colon]:
            parts = (host[:colon], host[colon + 1 :])
    if parts is None:
        return host.split("."), ""
    return parts[0].split("."), parts[1]


def _glob_match(pattern: str, name: str) -> bool:
    """Go's path/filepath.Match for one host label; a malformed pattern matches nothing."""
    # Translate to a regex: '*' any run, '?' one char, '[...]' class with '^' negation, '\\' escape.
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                return False
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            ranges: list[str] = []
            first = True
            while True:
                if i >= n:
                    return False
                if pattern[i] == "]" and not first:
                    break
                first = False
                lo, i = _class_char(pattern, i)
                if lo is None:
                    return False
                hi = lo
                if i < n and pattern[i] == "-":
                    upper, i = _class_char(pattern, i + 1)
                    if upper is None:
                        return False
                    hi = upper
                ranges.append(f"{re.escape(lo)}-{re.escape(hi)}" if hi != lo else re.escape(lo))
            if not ranges:
                return False
            out.append(("[^" if negate else "[") + "".join(ranges) + "]")
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.fullmatch("".join(out), name, re.DOTALL) is not None
    except re.error:
        return False


def _class_char(pattern: str, i: int) -> tuple[str | None, int]:
    """One (possibly escaped) character inside a glob class, and the next index."""
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            return None, i
    return pattern[i], i + 1


def key_matches(key: str, image: ImageReference) -> bool:
    """Whether a normalised keyring key applies to ``image`` (kubelet's URLsMatch).

    Ports must be identical, hosts need the same number of labels with each label
    matching as a glob, and the key's path must be a string prefix of the image path.
    """
    try:
        key_host, key_path = _split_url("https://" + key)
        image_host, image_path = _split_url("https://" + image.name)
    except _BadKey:
        return False
    key_labels, key_port = _split_host_port(key_host)
    image_labels, image_port = _split_host_port(image_host)
    if key_port != image_port or len(key_labels) != len(image_labels):
        return False
    if not image_path.startswith(key_path):
        return False
    return all(_glob_match(k, t) for k, t in zip(key_labels, image_labels, strict=True))


def pattern_matches(pattern: str, image: ImageReference) -> bool:
    """A credential provider's ``matchImages`` pattern against an image (URLsMatchStr)."""
    try:
        return key_matches(normalize_key(pattern), image)
    except ValueError:
        return False


@dataclass(frozen=True)
class NodeRegistries:
    """Registries whose pull credentials the nodes hold (kubelet credential provider
    plugins, a node config.json): patterns with the kubelet's own ``matchImages`` rules."""

    keys: tuple[str, ...] = ()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> tuple[NodeRegistries, list[str]]:
        keys, problems = [], []
        for p in patterns:
            try:
                keys.append(normalize_key(p))
            except ValueError as exc:
                problems.append(str(exc))
        return cls(tuple(keys)), problems

    def provide(self, image: ImageReference) -> bool:
        return any(key_matches(k, image) for k in self.keys)

    def __or__(self, other: NodeRegistries) -> NodeRegistries:
        return NodeRegistries(self.keys + other.keys)


class Keyring:
    """Credentials indexed by normalised registry key, looked up the kubelet's way."""

    def __init__(self) -> None:
        self._creds: dict[str, list[Credential]] = {}
        self._index: list[str] = []
        # A union's parts, looked up in order (the pod's secrets, then the node's providers).
        self._parts: tuple[Keyring, ...] = ()

    @classmethod
    def union(cls, *parts: Keyring) -> Keyring:
        """The kubelet's UnionDockerKeyring: every part's matches, parts in order.

        The kubelet looks up the pod's pull secrets first, then the node's credential
        providers; each part applies its own Docker Hub fallback.
        """
        keyring = cls()
        keyring._parts = tuple(p for p in parts if not p.is_empty())
        return keyring

    @classmethod
    def from_provider(
        cls, label: str, entries: Iterable[tuple[str, str, str]]
    ) -> tuple[Keyring, list[SecretProblem]]:
        """The keyring one credential provider response gives: (pattern, username,
        password) entries, named ``label`` (``credential provider NAME``)."""
        keyring = cls()
        problems: list[SecretProblem] = []
        keyring._add_entries(
            (_Entry(loc, user, pw, not user and not pw) for loc, user, pw in entries),
            label,
            label,
            None,
            problems,
        )
        return keyring, problems

    def _add(self, credential: Credential) -> None:
        if credential.key not in self._creds:
            self._creds[credential.key] = []
            self._index.append(credential.key)
            # Reverse lexical order puts "quay.io/coreos" before "quay.io", as upstream does.
            self._index.sort(reverse=True)
        self._creds[credential.key].append(credential)

    def _add_entries(
        self,
        entries: Iterable[_Entry],
        describe: str,
        problem_owner: str,
        secret_ref: str | None,
        problems: list[SecretProblem],
    ) -> None:
        for entry in entries:
            try:
                key = normalize_key(entry.loc)
            except ValueError as exc:
                problems.append(SecretProblem(problem_owner, f"{exc}; the kubelet ignores it"))
                continue
            if entry.empty:
                problems.append(
                    SecretProblem(
                        problem_owner,
                        f"entry {_show_key(entry.loc)} has no username, password or auth "
                        "(identitytoken and registrytoken are ignored by the kubelet); "
                        "it sends empty credentials",
                    )
                )
            self._add(
                Credential(
                    username=entry.username,
                    password=entry.password,
                    source=f"{describe} key {_show_key(entry.loc)}",
                    key=key,
                    secret=secret_ref,
                )
            )

    @classmethod
    def from_secrets(cls, secrets: Iterable[PullSecret]) -> tuple[Keyring, list[SecretProblem]]:
        """Build the keyring a pod's imagePullSecrets give, plus what is wrong with them.

        Secrets the kubelet skips (wrong type, missing or empty key) and secrets whose
        JSON it cannot decode are reported; the latter make the kubelet fail the pull.
        """
        keyring = cls()
        problems: list[SecretProblem] = []
        for secret in secrets:
            ref = f"{secret.namespace}/{secret.name}"
            data_key = _expected_data_key(secret.type)
            if data_key is None:
                problems.append(
                    SecretProblem(
                        ref,
                        f"type is {json.dumps(str(secret.type))}; the kubelet only reads "
                        f"{DOCKERCONFIGJSON_TYPE} and {DOCKERCFG_TYPE} pull secrets",
                    )
                )
                continue
            data = secret.data if isinstance(secret.data, Mapping) else {}
            encoded = data.get(data_key)
            if encoded is None:
                problems.append(
                    SecretProblem(ref, f"type {secret.type} but no {data_key!r} key in data")
                )
                continue
            if not isinstance(encoded, str):
                problems.append(SecretProblem(ref, f"data[{data_key!r}] is not a string"))
                continue
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                problems.append(SecretProblem(ref, f"data[{data_key!r}] is not valid base64"))
                continue
            if not raw:
                problems.append(
                    SecretProblem(ref, f"data[{data_key!r}] is empty; the kubelet ignores it")
                )
                continue
            try:
                doc = _load_json(raw)
                if data_key == DOCKERCONFIGJSON_KEY:
                    entries = _parse_config_json(doc)
                else:
                    entries = _parse_entries(doc, "the document")
            except _Invalid as exc:
                problems.append(
                    SecretProblem(
                        ref,
                        f"{data_key} {exc}; the kubelet fails every pull that uses this secret",
                        blocks_pull=True,
                    )
                )
                continue
            if not entries:
                problems.append(SecretProblem(ref, _empty_reason(data_key, doc)))
            elif data_key == DOCKERCFG_KEY and any(e.loc.lower() == "auths" for e in entries):
                problems.append(
                    SecretProblem(
                        ref,
                        f"{data_key} looks like a .dockerconfigjson document "
                        '({"auths": ...}); with this type the kubelet reads "auths" as a '
                        "registry name, so none of its credentials are used",
                    )
                )
            keyring._add_entries(entries, f"pull secret {ref} ({data_key})", ref, ref, problems)
        return keyring, problems

    @classmethod
    def from_docker_config(
        cls, raw: bytes | str, source: str
    ) -> tuple[Keyring, list[SecretProblem]]:
        """Build a keyring from a docker config file (``{"auths": ...}``) or a bare dockercfg map.

        Meant for the CLI; problems are reported against ``source``.
        """
        keyring = cls()
        problems: list[SecretProblem] = []
        try:
            doc = _load_json(raw)
            if isinstance(doc, dict) and any(k.lower() == "auths" for k in doc):
                entries = _parse_config_json(doc)
                for helper in ("credsStore", "credHelpers"):
                    if helper in doc:
                        problems.append(
                            SecretProblem(
                                source,
                                f"{helper!r} is set; credential helpers are not consulted, "
                                "only inline 'auths' entries are used",
                            )
                        )
            else:
                entries = _parse_entries(doc, "the document")
        except _Invalid as exc:
            problems.append(SecretProblem(source, f"config {exc}", blocks_pull=True))
            return keyring, problems
        if not entries:
            problems.append(SecretProblem(source, "config contains no registries"))
        keyring._add_entries(entries, source, source, None, problems)
        return keyring, problems

    def lookup(self, image: ImageReference) -> list[Credential]:
        """Every credential the kubelet would try for ``image``, in the order it tries them.

        The ``index.docker.io`` entry is used for Docker Hub images only when no key matched.
        """
        if self._parts:
            return [c for part in self._parts for c in part.lookup(image)]
        found: list[Credential] = []
        for key in self._index:
            if key_matches(key, image):
                found.extend(self._creds[key])
        if found:
            return found
        if DEFAULT_REGISTRY_KEY in self._creds and _is_default_registry_match(image.name):
            return list(self._creds[DEFAULT_REGISTRY_KEY])
        return []

    def keys(self) -> list[str]:
        """Normalised keys, most specific first (the order lookups walk)."""
        if self._parts:
            return [k for part in self._parts for k in Keyring.keys(part)]
        return list(self._index)

    def __len__(self) -> int:
        return sum(len(creds) for creds in self._creds.values()) + sum(len(p) for p in self._parts)

    def is_empty(self) -> bool:
        """True when no credential at all was loaded (every pull would be anonymous)."""
        return not self._creds and all(p.is_empty() for p in self._parts)

    def __repr__(self) -> str:
        return f"Keyring(keys={self.keys()!r}, credentials={len(self)})"


def _empty_reason(data_key: str, doc: object) -> str:
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


def _expected_data_key(secret_type: str) -> str | None:
    if secret_type == DOCKERCONFIGJSON_TYPE:
        return DOCKERCONFIGJSON_KEY
    if secret_type == DOCKERCFG_TYPE:
        return DOCKERCFG_KEY
    return None


def _is_default_registry_match(name: str) -> bool:
    """The kubelet's test for "this image is on Docker Hub", applied to the normalised name.

    Like upstream it also says yes for a first part without '.' or ':' (``localhost/x``,
    an uppercase host), so the index.docker.io entry is offered there too.
    """
    first, slash, _rest = name.partition("/")
    if not first:
        return False
    if not slash or first in ("docker.io", DEFAULT_REGISTRY_KEY):
        return True
    return "." not in first and ":" not in first
