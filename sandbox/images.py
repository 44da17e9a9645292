"""Push real (tiny) images to the sandbox registries over the registry HTTP API.

No docker/skopeo needed: blobs (gzip tar layers and a real image config), then per-platform
manifests, then optionally an OCI index or Docker manifest list, exactly as a build tool
would. Variants for the machine's own platform are runnable on the real node: a
busybox-static userland layer under the image's own small layer, ``sleep`` as command.
Pushing goes through the same auth the registry enforces (Basic, or a push-scoped
Bearer token from the realm), so the auth setup itself gets exercised.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import os
import platform as _host
import random
import re
import subprocess
import tarfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin

import httpx

from sandbox.registries import Registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
ACCEPT_ALL = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

Format = Literal["oci", "docker"]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as docker --platform spells it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"bad platform {text!r}; want os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def as_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


def host_platform() -> str:
    """``os/arch`` of this machine as OCI spells it: the real node's own platform."""
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}
    machine = _host.machine()
    return f"linux/{arch.get(machine, machine)}"


BUSYBOX = Path("/bin/busybox")
ROOTFS_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root")
# PID 1 of a test container: runs until killed (workloads use terminationGracePeriodSeconds 0).
RUN_CMD = ["/bin/sleep", "86400"]


def _tar_gz(add: Any) -> tuple[bytes, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), sha256_digest(raw)


def _dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def _file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


@functools.lru_cache(maxsize=1)
def userland_layer() -> tuple[bytes, str]:
    """Debian's busybox-static as a root filesystem: /bin/busybox plus one link per applet.

    Built once per process and identical every time, so registries store it once per repo.
    """
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    binary = BUSYBOX.read_bytes()

    def add(tar: tarfile.TarFile) -> None:
        for d in ROOTFS_DIRS:
            _dir(tar, d)
        _dir(tar, "tmp", 0o1777)
        _file(tar, "bin/busybox", binary, 0o755)
        _file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:\n")
        _file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for path in sorted(set(applets)):
            if path == "bin/busybox" or "/" not in path:
                continue
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "/bin/busybox", 0
            tar.addfile(info)

    return _tar_gz(add)


# --- auth ----------------------------------------------------------------------------

_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Scheme and params of a single ``WWW-Authenticate`` challenge (enough for distribution)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


class RegistryAuth(httpx.Auth):
    """Answers a 401 challenge once: Basic with ``creds``, or Bearer via the token realm.

    Tokens are asked with ``repository:<repo>:<actions>`` plus whatever scope the challenge
    names, using ``creds`` as Basic auth at the realm (anonymous when ``creds`` is None).
    """

    def __init__(self, creds: tuple[str, str] | None, repo: str, actions: str) -> None:
        self.creds = creds
        self.repo = repo
        self.actions = actions
        self._header: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._header:
            request.headers["Authorization"] = self._header
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if scheme == "basic":
            if self.creds is None:
                return
            raw = f"{self.creds[0]}:{self.creds[1]}".encode()
            self._header = "Basic " + base64.b64encode(raw).decode()
        elif scheme == "bearer":
            self._header = "Bearer " + self._fetch_token(params)
        else:
            return
        request.headers["Authorization"] = self._header
        yield request

    def _fetch_token(self, params: dict[str, str]) -> str:
        scopes = [f"repository:{self.repo}:{self.actions}"]
        if params.get("scope") and params["scope"] not in scopes:
            scopes.extend(params["scope"].split(" "))
        query: list[tuple[str, str | int | float | bool | None]] = [
            ("service", params.get("service", ""))
        ]
        query += [("scope", s) for s in scopes]
        with httpx.Client(timeout=10.0) as c:
            r = c.get(params["realm"], params=query, auth=self.creds)
        r.raise_for_status()
        body = r.json()
        return str(body.get("token") or body["access_token"])


def _client(registry: Registry, repo: str, actions: str) -> httpx.Client:
    return httpx.Client(
        base_url=registry.url,
        auth=RegistryAuth(registry.push_auth, repo, actions),
        timeout=30.0,
    )


# --- blobs & manifests ---------------------------------------------------------------


def _layer(size: int, rng: random.Random, label: str) -> tuple[bytes, str]:
    """A gzip tar with one file of ``size`` bytes; returns (blob, diff_id)."""
    payload = rng.randbytes(size)
    return _tar_gz(lambda tar: _file(tar, f"sandbox/{label}.bin", payload))


def _upload_blob(client: httpx.Client, repo: str, data: bytes, chunk_size: int | None) -> str:
    digest = sha256_digest(data)
    if client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    _check(r, 202)
    location = urljoin(str(r.url), r.headers["location"])
    if chunk_size:
        offset = 0
        while offset < len(data):
            chunk = data[offset : offset + chunk_size]
            r = client.patch(
                location,
                content=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
            )
            _check(r, 202)
            location = urljoin(str(r.url), r.headers["location"])
            offset += len(chunk)
        body = b""
    else:
        body = data
    sep = "&" if "?" in location else "?"
    r = client.put(
        f"{location}{sep}digest={digest}",
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    _check(r, 201)
    return digest


def _put_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media: str) -> str:
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media})
    _check(r, 201)
    digest = sha256_digest(body)
    got = r.headers.get("docker-content-digest")
    if got and got != digest:
        raise RuntimeError(f"registry computed {got}, we computed {digest}")
    return digest


def _check(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:500]}")


def _descriptor(media: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media, "digest": sha256_digest(data), "size": len(data), **extra}


def _push_platform_image(
    client: httpx.Client,
    repo: str,
    plat: Platform,
    fmt: Format,
    size: int,
    rng: random.Random,
    chunk_size: int | None,
    runnable: bool = False,
) -> tuple[bytes, str]:
    """Layers + config + manifest for one platform; returns (manifest bytes, media type)."""
    layers = [userland_layer()] if runnable else []
    layers.append(_layer(size, rng, f"{plat.os}-{plat.architecture}{plat.variant or ''}"))
    config: dict[str, Any] = {
        "created": "2024-01-01T00:00:00Z",
        **plat.as_json(),
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": RUN_CMD if runnable else ["/bin/sh"],
            "Labels": {"org.opencontainers.image.source": "pullmedic-sandbox"},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "sandbox/images.py"}],
    }
    config_bytes = _canonical(config)
    for layer, _ in layers:
        _upload_blob(client, repo, layer, chunk_size)
    _upload_blob(client, repo, config_bytes, chunk_size)
    media, cfg_media, layer_media = (
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        if fmt == "oci"
        else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": media,
        "config": _descriptor(cfg_media, config_bytes),
        "layers": [_descriptor(layer_media, layer) for layer, _ in layers],
    }
    return _canonical(manifest), media


def _push_attestation(
    client: httpx.Client, repo: str, subject_digest: str, chunk_size: int | None
) -> bytes:
    """A BuildKit-style attestation manifest (in-toto layer, unknown/unknown config)."""
    statement = _canonical(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": repo, "digest": {"sha256": subject_digest.split(":", 1)[1]}}],
            "predicate": {"spdxVersion": "SPDX-2.3", "name": "sandbox"},
        }
    )
    config = _canonical(
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(statement)]},
        }
    )
    _upload_blob(client, repo, statement, chunk_size)
    _upload_blob(client, repo, config, chunk_size)
    return _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config),
            "layers": [
                _descriptor(
                    IN_TOTO,
                    statement,
                    annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"},
                )
            ],
        }
    )


def push_image(
    registry: Registry,
    repo: str,
    tag: str,
    *,
    platforms: Sequence[str] = ("linux/amd64",),
    index: Literal["none", "oci", "docker"] = "none",
    attestation: bool = False,
    size: int = 1024,
    manifest_format: Format | None = None,
    chunk_size: int | None = None,
    seed: str | None = None,
    runnable: bool = True,
) -> str:
    """Push an image and tag it; returns the digest of what the tag points at.

    ``index="none"`` needs exactly one platform and pushes a single manifest (OCI unless
    ``manifest_format="docker"``). ``"oci"``/``"docker"`` push one manifest per platform
    and an OCI index / Docker manifest list over them; ``attestation`` adds a BuildKit-style
    unknown/unknown attestation entry per platform. ``chunk_size`` switches blob upload
    from monolithic to PATCH chunks. Content is random unless ``seed`` makes it repeatable.
    ``runnable`` puts the busybox userland under the variant for this machine's platform
    (when busybox-static is installed), so the real node can run it.
    """
    plats = [Platform.parse(p) for p in platforms]
    if not plats:
        raise ValueError("at least one platform")
    if index == "none" and (len(plats) != 1 or attestation):
        raise ValueError("index='none' pushes exactly one platform and no attestation")
    fmt: Format = manifest_format or ("docker" if index == "docker" else "oci")
    rng = random.Random(seed) if seed is not None else random.Random(os.urandom(16))
    own = Platform.parse(host_platform())
    runnable = runnable and BUSYBOX.exists()

    def runs(plat: Platform) -> bool:
        return runnable and (plat.os, plat.architecture) == (own.os, own.architecture)

    with _client(registry, repo, "pull,push") as client:
        if index == "none":
            body, media = _push_platform_image(
                client, repo, plats[0], fmt, size, rng, chunk_size, runs(plats[0])
            )
            return _put_manifest(client, repo, tag, body, media)
        entries: list[dict[str, Any]] = []
        attestations: list[dict[str, Any]] = []
        for plat in plats:
            body, media = _push_platform_image(
                client, repo, plat, fmt, size, rng, chunk_size, runs(plat)
            )
            digest = _put_manifest(client, repo, sha256_digest(body), body, media)
            entries.append(_descriptor(media, body, platform=plat.as_json()))
            if attestation:
                att = _push_attestation(client, repo, digest, chunk_size)
                _put_manifest(client, repo, sha256_digest(att), att, OCI_MANIFEST)
                attestations.append(
                    _descriptor(
                        OCI_MANIFEST,
                        att,
                        platform={"architecture": "unknown", "os": "unknown"},
                        annotations={
                            "vnd.docker.reference.digest": digest,
                            "vnd.docker.reference.type": "attestation-manifest",
                        },
                    )
                )
        list_media = OCI_INDEX if index == "oci" else DOCKER_LIST
        top = {"schemaVersion": 2, "mediaType": list_media, "manifests": entries + attestations}
        return _put_manifest(client, repo, tag, _canonical(top), list_media)


def push_pause(registry: Registry, repo: str = "pause", tag: str = "sandbox") -> str:
    """The sandbox's pause program as a one-layer image; returns its reference."""
    from sandbox.paths import binary

    program = binary("pause").read_bytes()
    layer, diff_id = _tar_gz(lambda tar: _file(tar, "pause", program, 0o755))
    plat = Platform.parse(host_platform())
    config = _canonical(
        {
            "created": "2024-01-01T00:00:00Z",
            **plat.as_json(),
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )
    with _client(registry, repo, "pull,push") as client:
        _upload_blob(client, repo, layer, None)
        _upload_blob(client, repo, config, None)
        manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": _descriptor(OCI_CONFIG, config),
                "layers": [_descriptor(OCI_LAYER, layer)],
            }
        )
        _put_manifest(client, repo, tag, manifest, OCI_MANIFEST)
    return f"{registry.host}/{repo}:{tag}"


def resolve(registry: Registry, repo: str, ref: str) -> str:
    """Digest a tag points at (HEAD with every manifest type accepted)."""
    with _client(registry, repo, "pull") as client:
        r = client.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        _check(r, 200)
        return r.headers["docker-content-digest"]


def delete_tag(registry: Registry, repo: str, tag: str) -> None:
    """Delete the manifest the tag points at (distribution deletes by digest only)."""
    with _client(registry, repo, "pull,push,delete") as client:
        r = client.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
        _check(r, 200)
        digest = r.headers["docker-content-digest"]
        r = client.delete(f"/v2/{repo}/manifests/{digest}")
        _check(r, 202)


def list_tags(registry: Registry, repo: str) -> list[str]:
    """All tags, following ``Link: <..>; rel="next"`` pages."""
    tags: list[str] = []
    with _client(registry, repo, "pull") as client:
        url: str | None = f"/v2/{repo}/tags/list"
        while url:
            r = client.get(url)
            if r.status_code == 404:
                return tags
            _check(r, 200)
            tags.extend(r.json().get("tags") or [])
            link = r.headers.get("link")
            m = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link or "")
            url = urljoin(str(r.url), m.group(1)) if m else None
    return tags


def pull_whole(registry: Registry, repo: str, ref: str) -> str:
    """Pull ``repo:ref`` as a node would (manifests, children, config, layers) and
    return the digest; through a pull-through cache this is what makes it hold the image."""
    with _client(registry, repo, "pull") as client:
        r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        _check(r, 200)
        top = r.headers["docker-content-digest"]
        pending = [r.json()]
        while pending:
            doc = pending.pop()
            for child in doc.get("manifests", []):
                c = client.get(
                    f"/v2/{repo}/manifests/{child['digest']}", headers={"Accept": ACCEPT_ALL}
                )
                _check(c, 200)
                pending.append(c.json())
            for blob in [doc.get("config"), *doc.get("layers", [])]:
                if blob:
                    b = client.get(f"/v2/{repo}/blobs/{blob['digest']}", follow_redirects=True)
                    _check(b, 200)
        return top
