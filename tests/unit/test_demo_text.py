"""The demo's table cells: long Event texts are cut at word boundaries, never mid-word."""

from __future__ import annotations

import pytest

from sandbox.demo import shorten


@pytest.mark.parametrize(
    ("text", "width", "want"),
    [
        ("Remediated: patched image", 70, "Remediated: patched image"),
        ("", 70, ""),
        (
            "Failed: Failed to pull image 127.0.0.1:5000/shop/web:1.4.9: not found",
            40,
            "Failed: Failed to pull image ...",
        ),
        ("BackOff:   Back-off   pulling", 70, "BackOff: Back-off pulling"),
    ],
)
def test_shorten_cuts_on_words(text: str, width: int, want: str) -> None:
    got = shorten(text, width)
    assert got == want
    assert len(got) <= width
