"""Registry keys as the kubelet matches them: normalising a secret's or a provider's key,
and whether it covers an image (globs with one label per ``*``, ports, path prefixes).

Most "pull access denied" incidents are a key that silently does not match (wrong port,
``registry-1.docker.io``, a glob with the wrong label count); these are the kubelet's
rules, so pullmedic can say so.
"""

from __future__ import annotations

import json
import re
from typing import Final
from urllib.parse import unquote

from pullmedic.core.reference import ImageReference

# The kubelet's Docker Hub fallback key: what "https://index.docker.io/v1/" normalises to.
DEFAULT_REGISTRY_KEY: Final = "index.docker.io"

_MAX_SHOWN_KEY: Final = 120
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9a-fA-F]{2})")
# ASCII characters Go's url.Parse accepts in a host (everything else is an error there).
_HOST_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]<>\"%"
)


def show_key(loc: str) -> str:
    """Registry keys are addresses, not secrets, but bound and escape them anyway."""
    if len(loc) > _MAX_SHOWN_KEY:
        loc = loc[:_MAX_SHOWN_KEY] + "..."
    return json.dumps(loc, ensure_ascii=True)


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
        raise ValueError(f"registry key {show_key(loc)} {exc}") from None
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


def is_default_registry_match(name: str) -> bool:
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
