"""The sandbox's KEP-4412 test plugin (sandbox/tokenprovider.py), against a stand-in for
the API server's TokenReview on loopback: it answers for ``puller`` only, checks the
audience, and never prints the token."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pullmedic.core.credentialprovider import parse_config
from sandbox import pki
from sandbox.tokenprovider import (
    TOKEN_AUDIENCE,
    TOKEN_HOST,
    TOKEN_PASSWORD,
    TOKEN_PLUGIN,
    provider_entry,
)

REVIEWS = {
    "tok-puller": ("system:serviceaccount:team:puller", [TOKEN_AUDIENCE]),
    "tok-other": ("system:serviceaccount:team:other", [TOKEN_AUDIENCE]),
    "tok-wrong-audience": ("system:serviceaccount:team:puller", ["something-else"]),
    "tok-user": ("alice", [TOKEN_AUDIENCE]),
}


class _Review(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Review.seen.append(body)
        assert self.path == "/apis/authentication.k8s.io/v1/tokenreviews"
        spec = body["spec"]
        hit = REVIEWS.get(spec["token"])
        status: dict[str, Any] = {"authenticated": False}
        if hit is not None and set(spec.get("audiences") or []) & set(hit[1]):
            status = {"authenticated": True, "user": {"username": hit[0]}, "audiences": hit[1]}
        out = json.dumps({"kind": "TokenReview", "status": status}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def review_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("pki")
    keys = pki.generate(folder)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(keys.ca_cert))
    ctx.load_cert_chain(str(keys.serving_cert), str(keys.serving_key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Review)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    path = folder / "review.json"
    path.write_text(
        json.dumps(
            {
                "server": f"https://127.0.0.1:{server.server_address[1]}",
                "ca": str(keys.ca_cert),
                "cert": str(keys.admin_cert),
                "key": str(keys.admin_key),
            }
        )
    )
    try:
        yield path
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sandbox.tokenprovider import plugin_source

    path = tmp_path_factory.mktemp("bin") / TOKEN_PLUGIN
    path.write_text(plugin_source())
    path.chmod(0o755)
    return path


def run(plugin: Path, review_file: Path, token: str | None) -> subprocess.CompletedProcess[str]:
    req: dict[str, Any] = {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": f"{TOKEN_HOST}/team/app",
    }
    if token is not None:
        req["serviceAccountToken"] = token
    return subprocess.run(
        [str(plugin)],  # through its shebang, as the kubelet execs it
        input=json.dumps(req),
        capture_output=True,
        text=True,
        env={"SANDBOX_TOKEN_REVIEW": str(review_file), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )


def test_puller_gets_the_registrys_credentials(plugin: Path, review_file: Path) -> None:
    r = run(plugin, review_file, "tok-puller")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "CredentialProviderResponse"
    assert doc["auth"] == {TOKEN_HOST: {"username": "puller", "password": TOKEN_PASSWORD}}
    assert _Review.seen[-1]["spec"]["audiences"] == [TOKEN_AUDIENCE]


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("tok-other", "refusing ServiceAccount team/other"),
        ("tok-wrong-audience", "not authenticated"),
        ("tok-user", "not a ServiceAccount"),
        ("tok-unknown", "not authenticated"),
        (None, "no serviceAccountToken"),
    ],
)
def test_everyone_else_is_refused(
    plugin: Path, review_file: Path, token: str | None, says: str
) -> None:
    r = run(plugin, review_file, token)
    assert r.returncode == 1 and not r.stdout
    assert says in r.stderr
    assert token is None or token not in r.stderr + r.stdout


def test_its_config_entry_is_one_the_kubelet_accepts(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [provider_entry(tmp_path / "review.json")],
    }
    (spec,) = parse_config(doc)
    assert spec.token_attributes is not None
    assert spec.token_attributes.audience == TOKEN_AUDIENCE
    assert spec.token_attributes.cache_type == "ServiceAccount"
