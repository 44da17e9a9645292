"""WWW-Authenticate, Link, error-body, Retry-After, token-claim and URL-redaction parsing.

The registry edge's pure helpers, each from the module that owns it.
"""

from __future__ import annotations

import base64
import json

import pytest

from pullmedic.probe.challenges import Challenge, parse_challenges
from pullmedic.probe.errors import parse_error_codes
from pullmedic.probe.hostgate import parse_retry_after
from pullmedic.probe.taglist import parse_link_next
from pullmedic.probe.tokens import token_grants
from pullmedic.probe.urls import redact_url


def _c(scheme: str, **params: str) -> Challenge:
    return Challenge(scheme, params)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
            [_c("bearer", realm="https://auth.docker.io/token", service="registry.docker.io")],
        ),
        (
            'Basic realm="Registry Realm"',
            [_c("basic", realm="Registry Realm")],
        ),
        # Two challenges in one header, quoted string holding a comma.
        (
            'Basic realm="a, b", Bearer realm="https://r/t",service="s",'
            'scope="repository:x/y:pull",error="insufficient_scope"',
            [
                _c("basic", realm="a, b"),
                _c(
                    "bearer",
                    realm="https://r/t",
                    service="s",
                    scope="repository:x/y:pull",
                    error="insufficient_scope",
                ),
            ],
        ),
        # Scope listing several actions (commas inside quotes) and a host:port name.
        (
            'Bearer realm="https://r/t",scope="repository:h:5000/x:pull,push"',
            [_c("bearer", realm="https://r/t", scope="repository:h:5000/x:pull,push")],
        ),
        # Whitespace around '=', case-insensitive scheme and parameter names, token value.
        (
            "BEARER Realm = https://r/t , Service=svc",
            [_c("bearer", realm="https://r/t", service="svc")],
        ),
        # Escaped quote inside a quoted string.
        (r'Bearer realm="a\"b"', [_c("bearer", realm='a"b')]),
        # Bare scheme, and scheme after junk.
        ("Bearer", [_c("bearer")]),
        ("@@@, Basic realm=x", [_c("basic", realm="x")]),
        ("", []),
        # Unterminated quote: take what is there, do not crash.
        ('Bearer realm="https://r/t', [_c("bearer", realm="https://r/t")]),
        # First occurrence of a repeated parameter wins.
        ('Bearer realm="one",realm="two"', [_c("bearer", realm="one")]),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_token68_challenge_then_params() -> None:
    got = parse_challenges('Negotiate abc123==, Basic realm="x"')
    assert got[0].scheme == "negotiate" and got[0].token68 == "abc123=="
    assert got[1] == _c("basic", realm="x")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('</v2/x/tags/list?n=2&last=b>; rel="next"', "/v2/x/tags/list?n=2&last=b"),
        ("<https://h/v2/x/tags/list?last=b>; rel=next", "https://h/v2/x/tags/list?last=b"),
        ('</a>; rel="prev", </b>; rel="next"', "/b"),
        ('</a>; rel="prev"', None),
        ("", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_parse_link_next(header: str | None, expected: str | None) -> None:
    assert parse_link_next(header) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}', ("MANIFEST_UNKNOWN",)),
        (
            b'{"errors":[{"code":"NAME_UNKNOWN"},{"code":"DENIED"},{"code":"NAME_UNKNOWN"}]}',
            ("NAME_UNKNOWN", "DENIED"),
        ),
        (b"not json", ()),
        (b"[]", ()),
        (b'{"errors":"x"}', ()),
        (b'{"errors":[{"code":5}]}', ()),
    ],
)
def test_parse_error_codes(body: bytes, expected: tuple[str, ...]) -> None:
    assert parse_error_codes(body) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://auth.example/token?service=reg&scope=repository:a:pull",
            "https://auth.example/token?service=reg&scope=repository:a:pull",
        ),
        ("https://user:pw@h/v2/", "https://h/v2/"),
        ("https://h/t?access_token=SECRET&n=5", "https://h/t?access_token=REDACTED&n=5"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "SECRET" not in redact_url(url) and "pw" not in redact_url(url)


def _jwt(claims: dict[str, object]) -> str:
    def b64(d: bytes) -> str:
        return base64.urlsafe_b64encode(d).rstrip(b"=").decode()

    return f"{b64(b'{}')}.{b64(json.dumps(claims).encode())}.sig"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (_jwt({"access": [{"type": "repository", "name": "a/b", "actions": ["pull"]}]}), True),
        (_jwt({"access": [{"type": "repository", "name": "a/b", "actions": ["*"]}]}), True),
        (_jwt({"access": [{"type": "repository", "name": "a/c", "actions": ["pull"]}]}), False),
        (_jwt({"access": [{"type": "repository", "name": "a/b", "actions": ["push"]}]}), False),
        (_jwt({"access": []}), False),
        (_jwt({"sub": "x"}), None),
        ("opaque-token", None),
        ("a.!!!.c", None),
    ],
)
def test_token_grants(token: str, expected: bool | None) -> None:
    assert token_grants(token, "a/b") is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        ("0", 0.0),
        ("999999", 86400.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0),
        ("soon", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=60.0) == expected
