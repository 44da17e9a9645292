"""``WWW-Authenticate`` challenges: what a registry asks for before it answers.

The header grammar (RFC 9110 section 11.6.1) is parsed by hand because a hostile registry
writes it: garbage is skipped, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = _TCHAR | frozenset("/=")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; scheme lower-cased, parameter names too."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse every challenge in a ``WWW-Authenticate`` value (RFC 9110 section 11.6.1).

    Handles several challenges in one header, quoted strings containing commas and
    escapes, bare tokens and token68. Garbage is skipped rather than raised: a hostile
    registry must not be able to crash a diagnosis.
    """
    out: list[Challenge] = []
    s = header
    n = len(s)
    i = 0

    def skip_ws(j: int) -> int:
        while j < n and s[j] in " \t":
            j += 1
        return j

    def read_token(j: int) -> tuple[str, int]:
        k = j
        while k < n and s[k] in _TCHAR:
            k += 1
        return s[j:k], k

    def read_quoted(j: int) -> tuple[str, int]:
        # s[j] == '"'
        buf: list[str] = []
        k = j + 1
        while k < n:
            c = s[k]
            if c == "\\" and k + 1 < n:
                buf.append(s[k + 1])
                k += 2
                continue
            if c == '"':
                return "".join(buf), k + 1
            buf.append(c)
            k += 1
        return "".join(buf), k  # unterminated: take what is there

    while i < n:
        while i < n and s[i] in " \t,":
            i += 1
        if i >= n:
            break
        scheme, j = read_token(i)
        if not scheme:
            # Not a token: skip to the next comma and try again.
            while i < n and s[i] != ",":
                i += 1
            continue
        i = skip_ws(j)
        params: dict[str, str] = {}
        token68: str | None = None
        # token68: e.g. "Negotiate abc123==" followed by end or comma.
        k = i
        while k < n and s[k] in _TOKEN68:
            k += 1
        if k > i and (k >= n or s[skip_ws(k)] == ",") and "=" in s[i:k]:
            head = s[i:k].rstrip("=")
            if head and "=" not in head:
                token68 = s[i:k]
                i = k
        if token68 is None:
            while i < n:
                start = i
                i = skip_ws(i)
                name, j = read_token(i)
                j2 = skip_ws(j)
                if not name or j2 >= n or s[j2] != "=":
                    i = start  # the next challenge (or junk) starts here
                    break
                j2 = skip_ws(j2 + 1)
                if j2 < n and s[j2] == '"':
                    value, j2 = read_quoted(j2)
                else:
                    # Lenient: unquoted realms such as https://x/y are common in the wild.
                    k2 = j2
                    while k2 < n and s[k2] not in ", \t":
                        k2 += 1
                    value, j2 = s[j2:k2], k2
                params.setdefault(name.lower(), value)
                i = skip_ws(j2)
                if i < n and s[i] == ",":
                    i += 1
                    continue
                break
        out.append(Challenge(scheme.lower(), params, token68))
    return out


def bearer_challenge(header: str | None) -> Challenge | None:
    """The first Bearer challenge naming a token realm, if the header carries one."""
    return next(
        (c for c in parse_challenges(header or "") if c.scheme == "bearer" and c.realm), None
    )
