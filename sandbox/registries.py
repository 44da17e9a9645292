"""Four real distribution v3 registries on loopback, one per auth flavour the prober meets.

* ``open``   - no auth (like a private in-cluster registry)
* ``basic``  - htpasswd/bcrypt, ``alice``/``alice-secret`` pushes and pulls
* ``bearer`` - Docker-Hub-style token auth against :mod:`sandbox.tokenserver`
* ``mirror`` - a second open registry (mirror / fallback scenarios)

Processes run in their own session, are killed by the kernel if the starting (main)
thread dies (PR_SET_PDEATHSIG), and by ``RegistrySet.stop``/atexit otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from sandbox.paths import binary
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
            _terminate(reg.process)
            reg.process = None
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None


_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with _LIVE_LOCK:
        _LIVE.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _terminate(proc)


def _pdeathsig() -> Callable[[], None] | None:
    """preexec_fn asking the kernel to SIGKILL the child when its parent dies.

    PDEATHSIG fires when the *thread* that forked exits, so it is only safe from the main
    thread; elsewhere (e.g. asyncio.to_thread) we rely on stop()/atexit only.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def set_pdeathsig() -> None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # parent already gone between fork and prctl
            os._exit(1)

    return set_pdeathsig


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, port: int, auth: dict[str, Any] | None, max_tags: int) -> dict[str, Any]:
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
    return cfg


def _launch(
    name: str, workdir: Path, auth: dict[str, Any] | None, max_tags: int
) -> tuple[subprocess.Popen[bytes], int, Path]:
    root = workdir / name
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg_path = root / "config.yml"
    cfg_path.write_text(yaml.safe_dump(_config(root, port, auth, max_tags), sort_keys=False))
    log_path = root / "registry.log"
    env = dict(os.environ)
    # The registry wires OpenTelemetry's autoexport; without this it tries OTLP on :4318.
    env.update({"OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"})
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(binary("registry")), "serve", str(cfg_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
            preexec_fn=_pdeathsig(),  # only prctl runs in the child
        )
    with _LIVE_LOCK:
        _LIVE.add(proc)
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
) -> Registry:
    for _attempt in range(5):  # free_port() can race with another process
        proc, port, log_path = _launch(name, workdir, auth, max_tags)
        host = f"127.0.0.1:{port}"
        url = f"http://{host}"
        try:
            ok = _wait_ready(proc, url, log_path, timeout)
        except BaseException:
            _terminate(proc)
            raise
        if ok:
            return Registry(name, host, url, push_auth, dict(users), workdir / name, log_path, proc)
        _terminate(proc)
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
            _terminate(reg.process)
        tokens.stop()
        raise
    open_, basic, bearer, mirror = started
    return RegistrySet(open_, basic, bearer, mirror, token_url=token_url, token_server=tokens)
