"""Break images in a sandbox registry the way real registries break them.

A half garbage-collected registry, or a pull-through mirror serving stale content, still
lists an image whose manifest or blobs it can no longer serve. The kubelet's pull fails
on the missing piece; the manifest alone looks fine. Tests use these to produce that
state on a real distribution registry.
"""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.images import ACCEPT_ALL, RegistryAuth
from sandbox.registries import Registry


def _client(registry: Registry, repo: str) -> httpx.Client:
    return httpx.Client(
        base_url=registry.url,
        auth=RegistryAuth(registry.push_auth, repo, "pull,push,delete"),
        timeout=30.0,
    )


def manifest(registry: Registry, repo: str, ref: str) -> dict[str, Any]:
    """The manifest (or index) a tag or digest points at."""
    with _client(registry, repo) as c:
        r = c.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc


def delete_blob(registry: Registry, repo: str, digest: str) -> None:
    """Unlink one blob from the repository: HEAD and GET of it answer 404 from now on."""
    with _client(registry, repo) as c:
        r = c.delete(f"/v2/{repo}/blobs/{digest}")
        if r.status_code != 202:
            raise RuntimeError(f"blob delete answered {r.status_code}: {r.text[:200]}")


def delete_manifest(registry: Registry, repo: str, digest: str) -> None:
    """Delete one manifest by digest (e.g. one platform's child of an index)."""
    with _client(registry, repo) as c:
        r = c.delete(f"/v2/{repo}/manifests/{digest}")
        if r.status_code != 202:
            raise RuntimeError(f"manifest delete answered {r.status_code}: {r.text[:200]}")
