"""JSON Pointer (RFC 6901) tokens, for the JSON patches the operator and webhook send."""

from __future__ import annotations


def escape(token: str) -> str:
    """One reference token: ``~`` and ``/`` in a label or annotation key would otherwise
    read as an escape and a path separator (``pullmedic.dev/x`` -> ``pullmedic.dev~1x``)."""
    return token.replace("~", "~0").replace("/", "~1")
