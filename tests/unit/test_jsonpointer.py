"""JSON Pointer tokens: the order of the two replacements is the whole rule."""

from __future__ import annotations

import pytest

from pullmedic.core.jsonpointer import escape


@pytest.mark.parametrize(
    ("key", "token"),
    [
        ("app", "app"),
        ("pullmedic.dev/original-images", "pullmedic.dev~1original-images"),
        ("a~b", "a~0b"),
        ("~/", "~0~1"),  # "~" first: "/" -> "~1" must not become "~01"
        ("~1", "~01"),
    ],
)
def test_escape(key: str, token: str) -> None:
    assert escape(key) == token
