"""Four real distribution v3 registries on loopback, one per auth flavour the prober meets.

* ``open``   - no auth (like a private in-cluster registry)
* ``basic``  - htpasswd/bcrypt, ``alice``/``alice-secret`` pushes and pulls
* ``bearer`` - Docker-Hub-style token auth against :mod:`sandbox.tokenserver`
* ``mirror`` - a second open registry (mirror / fallback scenarios)

Processes run in their own session, are killed by the kernel if the starting (main)
thread dies (PR_SET_PDEATHSIG), and by ``RegistrySet.stop``/atexit otherwise.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from sandbox import procs
from sandbox.paths import binary
from sandbox.procs import free_port
from sandbox.tokenserver import DEFAULT_ISSUER, DEFAULT_SERVICE, TokenServer, hash_password

BASIC_USERS: dict[str, str] = {"alice": "alice-secret"}
BEARER_PUSH: tuple[str, str] = ("pusher", "pusher-secret")
BEARER_PULL_USERS: dict[str, str] = {"bob": "bob-secret", "pusher": "pusher-secret"}


@dataclass
class Registry:
    name: str  # "open" | "basic" | "bearer" | "mirror"
    host: str  # "127.0.0.1:PORT"
    url: str  # "http://127.0.0.1:PORT"
    push_auth: tuple[str, str] | None  # credentials that may push
    users: dict[str, str]  # pull users -> passwords (for tests to build pull secrets)
    workdir: Path | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


@dataclass
class RegistrySet:
    open: Registry
    basic: Registry
    bearer: Registry
    mirror: Registry
    token_url: str
    token_server: TokenServer | None = field(default=None, repr=False)

    def all(self) -> list[Registry]:
        return [self.open, self.basic, self.bearer, self.mirror]

    def stop(self) -> None:
        """Terminate every registry process (SIGTERM, then SIGKILL) and the token server."""
        for reg in self.all():
            procs.stop(reg.process)
            reg.process = None
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None


def _config(
    root: Path,
    port: int,
    auth: dict[str, Any] | None,
    max_tags: int,
    proxy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "tags": {"maxtags": max_tags},
    }
    if auth is not None:
        cfg["auth"] = auth
    if proxy is not None:
        cfg["proxy"] = proxy
    return cfg


def _launch(
    name: str,
    workdir: Path,
    auth: dict[str, Any] | None,
    max_tags: int,
    proxy: dict[str, Any] | None = None,
) -> tuple[subprocess.Popen[bytes], int, Path]:
    root = workdir / name
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg_path = root / "config.yml"
    cfg = _config(root, port, auth, max_tags, proxy)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = root / "registry.log"
    env = dict(os.environ)
    # The registry wires OpenTelemetry's autoexport; without this it tries OTLP on :4318.
    env.update({"OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"})
    proc = procs.spawn(
        [str(binary("registry")), "serve", str(cfg_path)], log_path, env=env, cwd=root
    )
    return proc, port, log_path


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> bool:
    """True once /v2/ answers (200 or 401); False if the process died (e.g. port race)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                r = client.get(f"{url}/v2/")
                if r.status_code in (200, 401):
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise TimeoutError(f"registry at {url} not ready after {timeout}s; log tail:\n{tail}")


def _start_one(
    name: str,
    workdir: Path,
    auth: dict[str, Any] | None,
    max_tags: int,
    push_auth: tuple[str, str] | None,
    users: dict[str, str],
    timeout: float,
    proxy: dict[str, Any] | None = None,
) -> Registry:
    for _attempt in range(5):  # free_port() can race with another process
        proc, port, log_path = _launch(name, workdir, auth, max_tags, proxy)
        host = f"127.0.0.1:{port}"
        url = f"http://{host}"
        try:
            ok = _wait_ready(proc, url, log_path, timeout)
        except BaseException:
            procs.stop(proc)
            raise
        if ok:
            return Registry(name, host, url, push_auth, dict(users), workdir / name, log_path, proc)
        procs.stop(proc)
    raise RuntimeError(f"registry {name} failed to start; see {workdir / name / 'registry.log'}")


def start_registries(workdir: Path, *, max_tags: int = 100, timeout: float = 30.0) -> RegistrySet:
    """Write configs, start the token server and four registries, wait for /v2/."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = TokenServer(workdir / "tokenserver")
    token_url = tokens.start()

    htpasswd = workdir / "basic" / "htpasswd"
    htpasswd.parent.mkdir(parents=True, exist_ok=True)
    htpasswd.write_text("".join(f"{u}:{hash_password(p)}\n" for u, p in BASIC_USERS.items()))

    started: list[Registry] = []
    try:
        specs: list[tuple[str, dict[str, Any] | None, tuple[str, str] | None, dict[str, str]]] = [
            ("open", None, None, {}),
            (
                "basic",
                {"htpasswd": {"realm": "sandbox-basic", "path": str(htpasswd)}},
                next(iter(BASIC_USERS.items())),
                BASIC_USERS,
            ),
            (
                "bearer",
                {
                    "token": {
                        "realm": token_url,
                        "service": DEFAULT_SERVICE,
                        "issuer": DEFAULT_ISSUER,
                        "rootcertbundle": str(tokens.cert_path),
                        "signingalgorithms": ["ES256"],
                    }
                },
                BEARER_PUSH,
                BEARER_PULL_USERS,
            ),
            ("mirror", None, None, {}),
        ]
        for name, auth, push, users in specs:
            started.append(_start_one(name, workdir, auth, max_tags, push, users, timeout))
    except BaseException:
        for reg in started:
            procs.stop(reg.process)
        tokens.stop()
        raise
    open_, basic, bearer, mirror = started
    return RegistrySet(open_, basic, bearer, mirror, token_url=token_url, token_server=tokens)


def start_ggcr(
    workdir: Path, name: str, *, users: dict[str, str] | None = None, timeout: float = 30.0
) -> Registry:
    """go-containerregistry's in-memory registry (sandbox/ggcr), open or behind Basic auth.

    A second implementation, so the prober's conclusions can be told apart from
    distribution's habits (which status for a missing repository, which headers a HEAD
    carries).
    """
    root = Path(workdir) / name
    root.mkdir(parents=True, exist_ok=True)
    users = dict(users or {})
    if len(users) > 1:
        raise ValueError("the ggcr wrapper knows one Basic user")
    for _attempt in range(5):  # free_port() can race with another process
        port = free_port()
        argv = [str(binary("ggcr")), "-addr", f"127.0.0.1:{port}"]
        env = dict(os.environ)
        for user, password in users.items():
            argv += ["-user", user]
            env["GGCR_PASSWORD"] = password
        log_path = root / "registry.log"
        proc = procs.spawn(argv, log_path, env=env, cwd=root)
        url = f"http://127.0.0.1:{port}"
        try:
            ok = _wait_ready(proc, url, log_path, timeout)
        except BaseException:
            procs.stop(proc)
            raise
        if ok:
            push = next(iter(users.items())) if users else None
            return Registry(name, f"127.0.0.1:{port}", url, push, users, root, log_path, proc)
        procs.stop(proc)
    raise RuntimeError(f"registry {name} failed to start; see {root / 'registry.log'}")


def start_pull_through(
    workdir: Path,
    name: str,
    upstream: Registry,
    *,
    credentials: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> Registry:
    """distribution in proxy mode (a pull-through cache) in front of ``upstream``, itself
    open to its clients; ``credentials`` are the cache's own for the upstream (wrong ones
    make the broken-cache case).

    Every upstream problem comes back from the cache as 404 (``MANIFEST_UNKNOWN`` on
    manifests, ``NAME_UNKNOWN`` on the tag list): a tag missing upstream, the cache's
    credentials refused, the upstream down for content the cache does not hold. Content
    it holds is served while the upstream is down. In front of the Bearer registry the
    proxy never fetched a token from the sandbox's token server (every upstream request
    401), so the sandbox's authenticated upstream is the Basic registry.
    """
    proxy: dict[str, Any] = {"remoteurl": upstream.url}
    if credentials is not None:
        proxy["username"], proxy["password"] = credentials
    return _start_one(name, Path(workdir), None, 100, None, {}, timeout, proxy)


def write_hosts_toml(certs_d: Path, host: str, mirrors: list[str], server: str) -> Path:
    """containerd's ``certs.d/<host>/hosts.toml``: pulls for ``host`` go to ``mirrors`` in
    order, then to ``server`` (containerd's fallback, which cannot be turned off).

    Every mirror gets a ``[host]`` table: containerd 1.6 refuses a file without one and
    then pulls from the name itself. Returns the file (remove its directory to undo).
    """
    d = Path(certs_d) / host
    d.mkdir(parents=True, exist_ok=True)
    text = f'server = "{server}"\n'
    for url in mirrors:
        text += f'\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
    f = d / "hosts.toml"
    f.write_text(text)
    return f
