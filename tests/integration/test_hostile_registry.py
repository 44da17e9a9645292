"""Bad input stays boring: a registry that serves what a real one never stores (a manifest
that is not JSON, a digest header that disagrees with the body, an index with no usable
entry, a blob of the wrong size) gets a clear cause and exit code 1 from
`pullmedic diagnose` — never a crash, never "pullable".

A real distribution registry validates on push, so these answers come from a small HTTP
server on loopback that plays a broken registry or pull-through mirror.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from pullmedic.app import cli

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@dataclass
class Served:
    """One repository's answers: manifests by reference, blobs by digest."""

    manifests: dict[str, tuple[str, bytes, str | None]] = field(default_factory=dict)
    blobs: dict[str, tuple[bytes, int | None]] = field(default_factory=dict)  # body, length


CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
LAYER = b"layer-bytes"


def image_manifest(layer_size: int = len(LAYER)) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(CONFIG),
                "size": len(CONFIG),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(LAYER),
                    "size": layer_size,
                }
            ],
        },
        sort_keys=True,
    ).encode()


def cases() -> dict[str, Served]:
    good = image_manifest()
    garbage = b"<html>mirror error</html>"
    attestations_only = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha(good),
                    "size": len(good),
                    "platform": {"architecture": "unknown", "os": "unknown"},
                }
            ],
        }
    ).encode()
    blobs = {sha(CONFIG): (CONFIG, None), sha(LAYER): (LAYER, None)}
    return {
        "whole": Served({"1": (OCI_MANIFEST, good, sha(good))}, dict(blobs)),
        "not-json": Served({"1": (OCI_MANIFEST, garbage, sha(garbage))}, dict(blobs)),
        "digest-lies": Served({"1": (OCI_MANIFEST, good, sha(b"something else"))}, dict(blobs)),
        "no-usable-entry": Served(
            {"1": (OCI_INDEX, attestations_only, sha(attestations_only))}, dict(blobs)
        ),
        "short-blob": Served(
            {"1": (OCI_MANIFEST, good, sha(good))},
            {sha(CONFIG): (CONFIG, None), sha(LAYER): (LAYER, len(LAYER) - 3)},
        ),
    }


class Handler(BaseHTTPRequestHandler):
    repos: ClassVar[dict[str, Served]] = {}

    def log_message(self, *_: Any) -> None:
        return

    def _answer(self, body: bytes) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"]:
            return self._send(200, b"{}", "application/json")
        if len(parts) >= 4 and parts[0] == "v2":
            repo, kind, ref = parts[1], parts[-2], parts[-1]
            served = self.repos.get(repo)
            if served and kind == "manifests":
                by_digest = {d: (m, b, d) for m, b, d in served.manifests.values() if d}
                hit = served.manifests.get(ref) or by_digest.get(ref)
                if hit:
                    media, content, digest = hit
                    extra = {"Docker-Content-Digest": digest} if digest else {}
                    return self._send(200, content, media, extra, body)
            if served and kind == "blobs" and ref in served.blobs:
                content, length = served.blobs[ref]
                return self._send(200, content, "application/octet-stream", {}, body, length)
        return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', "application/json")

    def _send(
        self,
        status: int,
        content: bytes,
        media: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = b"",
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(length if length is not None else len(content)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(content)

    def do_GET(self) -> None:
        self._answer(b"")

    def do_HEAD(self) -> None:
        self._answer(b"")


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    Handler.repos = cases()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def diagnose(host: str, repo: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(
            [
                "diagnose", f"{host}/{repo}:1", "--json", "--no-suggest",
                "--insecure-registry", host, "--allow-address", "127.0.0.0/8", "--timeout", "5",
            ]
        )  # fmt: skip
    return code, json.loads(out.getvalue())


@pytest.mark.parametrize(
    ("repo", "cause", "says"),
    [
        ("not-json", "ImageIncomplete", "not a JSON document"),
        ("digest-lies", "ImageIncomplete", "does not match its digest"),
        ("no-usable-entry", "PlatformMismatch", "available: none"),
        ("short-blob", "ImageIncomplete", "the manifest says"),
    ],
)
def test_hostile_answers_get_a_clear_cause(hostile: str, repo: str, cause: str, says: str) -> None:
    code, d = diagnose(hostile, repo)
    assert (code, d["cause"]) == (1, cause), d["summary"]
    assert says in d["summary"]


def test_the_same_server_serving_a_whole_image_is_pullable(hostile: str) -> None:
    """The control: the fakes above differ from a pullable image only in what is broken."""
    code, d = diagnose(hostile, "whole")
    assert (code, d["cause"], d["confidence"]) == (0, "ImageAvailable", "high"), d["summary"]
