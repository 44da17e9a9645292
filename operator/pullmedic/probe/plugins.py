"""Kubelet credential provider plugins, run by pullmedic with the node's configuration.

The same ``CredentialProviderConfig`` and plugin binaries the kubelet is started with
(``--credential-provider-config`` / ``--credential-provider-bin-dir``, named as the
kubelet names them): for an image some provider's ``matchImages`` accept, the plugin is
run with the kubelet's request on stdin, its response read from stdout, and the
credentials cached as the response says. The protocol itself is pure
(``core/credentialprovider.py``); this module is the exec edge:

- a timeout (the kubelet's one minute), after which the plugin's whole process group is
  killed; stdout bounded (1 MiB) and stderr bounded and never shown (plugins print
  tokens there when debugging);
- concurrent requests for the same image share one run (the kubelet's singleflight);
- a plugin that fails is a reason, not an exception: a diagnosis that ended in a
  credential cause becomes ``CredentialProviderFailed`` naming the provider and why;
- KEP-4412 token mode (a provider with ``tokenAttributes``): for the pod whose pull it is,
  the ServiceAccount is read and a token minted (``core.credentialprovider.ServiceAccounts``,
  implemented in ``kube/serviceaccounts.py``) exactly when the kubelet would
  (``token_mode``), the token and the listed annotations go to the plugin's stdin, and the
  cache keeps one entry per ServiceAccount (or per token, ``cacheType: Token``). A provider
  the kubelet would not run for that pod (a required annotation missing, no ServiceAccount)
  is a reason naming the ServiceAccount. The token is never logged nor shown.

:class:`ProviderDiagnoser` wraps any diagnoser (the prober) so every caller - the
operator, ``pullmedic diagnose``, ``explain`` and the admission webhook - probes with the
pod's pull secrets first, then the providers' credentials, as the kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from pullmedic.core.credentialprovider import ProviderConfigError, ProviderSpec, parse_config
from pullmedic.core.keyring import Keyring
from pullmedic.core.providerexchange import (
    PluginResponseError,
    ProviderCache,
    build_request,
    parse_response,
)
from pullmedic.core.reference import ImageReference
from pullmedic.core.registrykeys import normalize_key
from pullmedic.core.tokenmode import (
    PodIdentity,
    ServiceAccounts,
    TokenModeSkip,
    echoes_token,
    service_account_cache_key,
    token_hash,
    token_mode,
)
from pullmedic.telemetry import metrics

__all__ = [
    "MAX_STDOUT",
    "PluginFailure",
    "PluginRunner",
    "ProviderResult",
    "load_config",
]

log = logging.getLogger("pullmedic")

MAX_STDOUT: Final = 1 << 20  # a response is a few hundred bytes; anything near this is wrong
MAX_STDERR: Final = 64 << 10  # read (so the plugin never blocks on a full pipe), never shown
DEFAULT_TIMEOUT: Final = 60.0  # the kubelet's catch-all for exec plugins
_CHUNK: Final = 64 << 10


def load_config(path: str | os.PathLike[str]) -> tuple[ProviderSpec, ...]:
    """Read and validate a CredentialProviderConfig file (YAML or JSON, as the kubelet)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProviderConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProviderConfigError(f"{path} is not UTF-8 text") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ProviderConfigError(f"{path} is not valid YAML or JSON") from None
    try:
        return parse_config(doc)
    except ProviderConfigError as exc:
        raise ProviderConfigError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class PluginFailure:
    """Why a provider gave no credentials; ``reason`` is safe to show (no plugin output)."""

    provider: str
    reason: str


@dataclass(frozen=True)
class ProviderResult:
    """What the providers give for one image: a keyring to look up after the pod's
    secrets, the providers that answered, and the ones that failed."""

    keyring: Keyring = field(default_factory=Keyring)
    answered: tuple[str, ...] = ()
    failures: tuple[PluginFailure, ...] = ()


@dataclass(frozen=True)
class _Call:
    """What goes to one plugin run beyond the image (token mode); the token never prints."""

    token: str = field(default="", repr=False)
    annotations: Mapping[str, str] = field(default_factory=dict)
    sa_key: str = ""
    account: str = ""  # "ns/name" when run with a ServiceAccount's token

    def tell(self, reason: str) -> str:
        """A failure's reason, naming the ServiceAccount the plugin was run for."""
        return f"{reason}, run for the ServiceAccount {self.account}" if self.account else reason


def _safe(exc: BaseException) -> str:
    """An exception's message for a reason; edges raise messages without credentials."""
    return str(exc) or type(exc).__name__


class _Failed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PluginRunner:
    """Runs the configured providers for an image, with the kubelet's cache per provider."""

    def __init__(
        self,
        providers: Sequence[ProviderSpec],
        bin_dir: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_stdout: int = MAX_STDOUT,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] | None = None,
        accounts: ServiceAccounts | None = None,
    ) -> None:
        self.accounts = accounts  # KEP-4412 token mode: reads ServiceAccounts, mints tokens
        self.providers = tuple(providers)
        self.bin_dir = Path(bin_dir)
        self.timeout = timeout
        self.max_stdout = max_stdout
        self.environ = dict(os.environ if environ is None else environ)
        self._caches = {p.name: ProviderCache(clock) for p in self.providers}
        self._flights: dict[tuple[str, str, str], asyncio.Future[Any]] = {}
        self.runs = 0

    def matching(self, ref: ImageReference) -> list[ProviderSpec]:
        return [p for p in self.providers if p.matches(ref)]

    async def credentials(
        self, ref: ImageReference, pod: PodIdentity | None = None
    ) -> ProviderResult:
        """Every matching provider's credentials for ``ref``, in config order; ``pod``:
        whose pull it is (token-mode providers need it, as the kubelet does)."""
        keyrings: list[Keyring] = []
        answered: list[str] = []
        failures: list[PluginFailure] = []
        seen: set[str] = set()
        image = ref.name  # the kubelet asks for the repository, without tag or digest
        for spec in self.matching(ref):
            try:
                call = await self._call(spec, pod)
                response = await self._response(spec, image, call)
            except _Failed as exc:
                failures.append(PluginFailure(spec.name, exc.reason))
                log.warning("credential provider %s for %s: %s", spec.name, image, exc.reason)
                continue
            # Overlapping auth keys: the provider earlier in the config wins (as documented
            # for the kubelet's CredentialProviderConfig).
            entries = [
                (a.pattern, a.username, a.password)
                for a in response.auth
                if _key(a.pattern) not in seen
            ]
            seen.update(_key(a.pattern) for a in response.auth)
            kr, problems = Keyring.from_provider(spec.label, entries)
            for p in problems:
                log.info("credential provider %s: %s", spec.name, p.reason)
            answered.append(spec.name)
            keyrings.append(kr)
        return ProviderResult(Keyring.union(*keyrings), tuple(answered), tuple(failures))

    async def _call(self, spec: ProviderSpec, pod: PodIdentity | None) -> _Call:
        """What the kubelet would send ``spec`` for ``pod``: nothing more than the image
        for a plain provider; in token mode the token, annotations and cache key, or the
        reason it would not run the plugin."""
        attrs = spec.token_attributes
        if attrs is None:
            return _Call()
        account = None
        if pod is not None and pod.service_account:
            if self.accounts is None:
                raise _Failed(
                    "it runs in ServiceAccount token mode (KEP-4412) and pullmedic has no "
                    "Kubernetes client here to read the ServiceAccount and mint its token"
                )
            try:
                account = await self.accounts.service_account(pod.namespace, pod.service_account)
            except Exception as exc:  # any failure is a reason, never a crash
                raise _Failed(
                    f"cannot read the ServiceAccount {pod.account}: {_safe(exc)}"
                ) from None
        mode = token_mode(attrs, pod, account)
        if isinstance(mode, TokenModeSkip):
            raise _Failed(mode.message)
        token = ""
        if mode.account is not None and pod is not None and self.accounts is not None:
            try:
                token = await self.accounts.token(
                    pod.namespace, pod.service_account, mode.request(pod)
                )
            except Exception as exc:  # the edge raises messages without the token
                raise _Failed(
                    f"no token for the ServiceAccount {pod.account}: {_safe(exc)}"
                ) from None
        return _Call(
            token=token,
            annotations=dict(mode.annotations),
            sa_key=service_account_cache_key(mode, attrs.cache_type, token),
            account=pod.account if mode.account is not None and pod is not None else "",
        )

    async def _response(self, spec: ProviderSpec, image: str, call: _Call | None = None) -> Any:
        call = call or _Call()
        cache = self._caches[spec.name]
        hit = cache.get(image, call.sa_key)
        if hit is not None:
            return hit
        # The kubelet's singleflight key in token mode: image, token hash and annotations.
        key = (spec.name, image, call.sa_key + token_hash(call.token))
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = fut
        try:
            response = parse_response(await self._exec(spec, image, call), spec.api_version)
            cache_type = spec.token_attributes.cache_type if spec.token_attributes else ""
            if echoes_token(response, call.token, cache_type):
                raise _Failed(
                    "it answered the ServiceAccount token itself as the password, which the "
                    "kubelet discards unless tokenAttributes.cacheType is Token"
                )
            cache.put(image, response, spec.default_cache_duration, call.sa_key)
            fut.set_result(response)
            metrics.PROVIDER_RUNS.labels(provider=spec.name, result="ok").inc()
            return response
        except PluginResponseError as exc:
            failure = _Failed(call.tell(str(exc)))
            fut.set_exception(failure)
            metrics.PROVIDER_RUNS.labels(provider=spec.name, result="failed").inc()
            raise failure from None
        except _Failed as exc:
            failure = _Failed(call.tell(exc.reason))
            fut.set_exception(failure)
            metrics.PROVIDER_RUNS.labels(provider=spec.name, result="failed").inc()
            raise failure from None
        finally:
            del self._flights[key]
            if not fut.done():
                fut.cancel()  # cancelled mid-run: waiters see it rather than hang
            elif not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" warning when nobody waited

    async def _exec(self, spec: ProviderSpec, image: str, call: _Call) -> bytes:
        path = self.bin_dir / spec.name
        if not path.is_file() or not os.access(path, os.X_OK):
            raise _Failed(f"no executable {spec.name} in {self.bin_dir}")
        env = {**self.environ, **dict(spec.env)}
        self.runs += 1
        request = build_request(
            image,
            spec.api_version,
            service_account_token=call.token or None,
            service_account_annotations=call.annotations or None,
        )
        # A thread with its own deadline, not asyncio's subprocess support: that depends on
        # a child watcher that another library in the process may have replaced, and a
        # missed exit would hang the diagnosis for good.
        return await asyncio.to_thread(self._run, spec.name, [str(path), *spec.args], env, request)

    def _run(self, name: str, argv: list[str], env: dict[str, str], request: bytes) -> bytes:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except OSError as exc:
            raise _Failed(f"cannot start {name}: {exc.strerror or type(exc).__name__}") from None
        try:
            out, err_len = _talk(proc, request, time.monotonic() + self.timeout, self.max_stdout)
        except TimeoutError:
            raise _Failed(f"{name} did not answer within {self.timeout:g} s") from None
        except _Oversized:
            raise _Failed(f"{name} wrote more than {self.max_stdout} bytes") from None
        finally:
            _reap(proc)
        if proc.returncode != 0:
            raise _Failed(
                f"{name} exited with status {proc.returncode} "
                f"(its stderr, {err_len} bytes, is not shown: it may hold credentials)"
            )
        return out


class _Oversized(Exception):
    pass


def _key(pattern: str) -> str:
    try:
        return normalize_key(pattern)
    except ValueError:
        return pattern


def _talk(
    proc: subprocess.Popen[bytes], request: bytes, deadline: float, max_stdout: int
) -> tuple[bytes, int]:
    """Write the request, read stdout (bounded) and stderr (counted) until both close, then
    wait for the exit; TimeoutError past ``deadline``, _Oversized past the bounds."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(request)  # a request is small: it fits the pipe
        proc.stdin.close()
    out = bytearray()
    err_len = 0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            for key, _ in sel.select(min(left, 1.0)):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.data == "out":
                    out += chunk
                    if len(out) > max_stdout:
                        raise _Oversized
                else:
                    err_len += len(chunk)  # counted, never kept, never logged
                    if err_len > MAX_STDERR * 16:
                        raise _Oversized
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise TimeoutError from None
    return bytes(out), err_len


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill the plugin's process group (helpers it left behind too) and wait for it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
