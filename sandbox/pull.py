"""A containerd-like image pull over plain HTTP(S), for the node emulator.

This reproduces what containerd's CRI plugin does for ``PullImage`` closely enough that the
kubelet-visible error texts are the real ones (containerd v2 ``core/remotes/docker``:
``resolver.go``, ``authorizer.go``, ``auth/fetch.go``; ``core/images`` platform handling;
CRI ``image_pull.go``), and the kubelet's gRPC unwrapping (``k8s.io/cri-client``: an
``Unknown`` status loses its ``rpc error: code = Unknown desc =`` prefix, other codes keep it).

One :class:`Puller` is shared by the node; every pull builds its own authorizer (containerd
creates a resolver per CRI pull), so tokens are not shared between pulls.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import json
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx

# Accept header containerd sends when resolving (resolver.go NewResolver).
RESOLVE_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "*/*",
    ]
)
INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    }
)
MAX_MANIFEST_SIZE = 4 * 1048 * 1048  # containerd's MaxManifestSize (sic: 1048)
MAX_TOKEN_BODY = 1 << 20
MAX_BLOB_SIZE = 512 << 20
USER_AGENT = "containerd/v2.1.4"
OAUTH_CLIENT_ID = "containerd-client"
DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
_MAX_RESPONSES = 5  # retryRequest gives up once more than 5 responses were seen


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class RuntimeErr(Exception):
    """An error inside the runtime, carrying the errdefs class that picks the gRPC code."""

    def __init__(self, msg: str, kind: str = "unknown") -> None:
        super().__init__(msg)
        self.msg = msg
        # "notfound" | "invalidauth" | "notimplemented" | "unexpected" | "unknown"
        self.kind = kind

    def wrap(self, prefix: str) -> RuntimeErr:
        """``fmt.Errorf("<prefix>: %w", err)``: same class, longer text."""
        return RuntimeErr(f"{prefix}: {self.msg}", self.kind)

    def __str__(self) -> str:
        return self.msg


class UnexpectedStatus(RuntimeErr):
    """``remoteerrors.ErrUnexpectedStatus`` as containerd 1.6 (the real node's) prints it:
    ``unexpected status: 401 Unauthorized``, without method, URL or body (1.7 added them)."""

    def __init__(self, method: str, url: str, status: int, reason: str, body: bytes) -> None:
        super().__init__(f"unexpected status: {status} {go_status(status, reason)}", "unexpected")
        self.status = status


class PullError(Exception):
    """What the kubelet receives from ``PullImage``: a gRPC status, rendered like cri-client."""

    def __init__(self, code: str, desc: str) -> None:
        super().__init__(desc)
        self.code = code
        self.desc = desc

    def __str__(self) -> str:
        if self.code == "Unknown":
            return self.desc
        return f"rpc error: code = {self.code} desc = {self.desc}"


_GRPC_CODE = {
    "notfound": "NotFound",
    "notimplemented": "Unimplemented",
    "invalidargument": "InvalidArgument",
}


def to_pull_error(image: str, err: RuntimeErr) -> PullError:
    """CRI: ``failed to pull and unpack image %q: %w`` then errgrpc.ToGRPC."""
    desc = f'failed to pull and unpack image "{image}": {err.msg}'
    return PullError(_GRPC_CODE.get(err.kind, "Unknown"), desc)


def registry_error_text(body: bytes) -> str:
    """distribution's errcode rendering of an ``{"errors": [...]}`` body ("" otherwise)."""
    if not body:
        return ""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list) or not errors:
        return ""
    parts: list[str] = []
    for e in errors:
        if not isinstance(e, dict):
            continue
        code = str(e.get("code", "unknown")).lower()
        message = str(e.get("message", "")) or code
        parts.append(f"{code}: {message}")
    if not parts:
        return ""
    if len(parts) == 1:
        return parts[0]
    return "errors:\n" + "\n".join(parts) + "\n"


def go_status(code: int, reason: str) -> str:
    if not reason:
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "status code " + str(code)
    return reason


def _host_port(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = "127.0.0.1" if host == "localhost" else host  # Go prints the address it dialled
    shown = f"[{shown}]" if ":" in shown else shown
    return host, f"{shown}:{port}"


def go_transport_error(method: str, url: str, exc: BaseException) -> str:
    """Render an httpx transport failure the way Go's ``*url.Error`` prints."""
    op = method[:1].upper() + method[1:].lower()
    host, hostport = _host_port(url)
    text = str(exc).lower()
    # anyio says "All connection attempts failed": the errno is further down the chain.
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            break
        if isinstance(cause, socket.gaierror):
            text += " name or service not known"
        elif isinstance(cause, OSError) and cause.errno is not None:
            text += " " + {
                errno.ECONNREFUSED: "connection refused",
                errno.EHOSTUNREACH: "no route to host",
                errno.ENETUNREACH: "network is unreachable",
                errno.ETIMEDOUT: "timed out",
            }.get(cause.errno, os.strerror(cause.errno).lower())
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectTimeout):
        inner = f"dial tcp {hostport}: i/o timeout"
    elif isinstance(exc, httpx.ConnectError):
        if "refused" in text:
            inner = f"dial tcp {hostport}: connect: connection refused"
        elif (
            "name or service not known" in text
            or "nodename nor servname" in text
            or ("temporary failure in name resolution" in text)
            or "no address associated" in text
        ):
            inner = f"dial tcp: lookup {host} on 127.0.0.53:53: no such host"
        elif "no route" in text:
            inner = f"dial tcp {hostport}: connect: no route to host"
        elif "unreachable" in text:
            inner = f"dial tcp {hostport}: connect: network is unreachable"
        else:
            inner = f"dial tcp {hostport}: connect: {exc}"
    elif isinstance(exc, httpx.TimeoutException):
        inner = "net/http: timeout awaiting response headers"
    elif isinstance(exc, httpx.RemoteProtocolError):
        inner = "EOF"
    elif isinstance(exc, httpx.ReadError) and "reset by peer" in text:
        # Go names the local address too; the emulator does not know its port (0 here).
        inner = f"read tcp 127.0.0.1:0->{hostport}: read: connection reset by peer"
    else:
        inner = str(exc) or exc.__class__.__name__
    return f'{op} "{url}": {inner}'


# --------------------------------------------------------------------------------------
# WWW-Authenticate
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: Mapping[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|\s*$|\s*,)")
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*')


def parse_www_authenticate(values: str | Sequence[str]) -> list[Challenge]:
    """Parse one or more ``WWW-Authenticate`` values into challenges (RFC 7235 grammar).

    Several challenges may share one header (``Basic realm="x", Bearer realm="y"``).
    """
    if isinstance(values, str):
        values = [values]
    out: list[Challenge] = []
    for value in values:
        pos = 0
        n = len(value)
        while pos < n:
            # skip separators
            while pos < n and value[pos] in " \t,":
                pos += 1
            if pos >= n:
                break
            m = _SCHEME_RE.match(value, pos)
            if not m:
                break
            scheme = m.group(1).lower()
            pos = m.end(1)
            params: dict[str, str] = {}
            while pos < n:
                save = pos
                while pos < n and value[pos] in " \t":
                    pos += 1
                if pos < n and value[pos] == ",":
                    pos += 1
                pm = _PARAM_RE.match(value, pos)
                if not pm:
                    pos = save
                    break
                # a new scheme looks like "token " not "token="; _PARAM_RE needs "="
                key = pm.group(1).lower()
                raw = pm.group(2)
                val = re.sub(r"\\(.)", r"\1", raw) if raw is not None else (pm.group(3) or "")
                params[key] = val
                pos = pm.end()
            out.append(Challenge(scheme, params))
            # skip to next challenge
            while pos < n and value[pos] in " \t,":
                pos += 1
    return out


def go_query(params: Sequence[tuple[str, str]]) -> str:
    """``url.Values.Encode()``: keys sorted, values kept in order, QueryEscape'd."""
    by_key: dict[str, list[str]] = {}
    for k, v in params:
        by_key.setdefault(k, []).append(v)
    parts: list[str] = []
    for k in sorted(by_key):
        for v in by_key[k]:
            parts.append(f"{quote_plus(k, safe='~')}={quote_plus(v, safe='~')}")
    return "&".join(parts)


# --------------------------------------------------------------------------------------
# Platforms (containerd/platforms)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s


def normalize_platform(os_: str, arch: str, variant: str = "") -> Platform:
    os_ = os_.lower()
    if os_ == "macos":
        os_ = "darwin"
    arch = arch.lower()
    variant = variant.lower()
    if arch in ("i386",):
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        if variant == "v1":
            variant = ""
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        if variant in ("8", "v8", "v8.0"):
            variant = ""
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return Platform(os_, arch, variant)


def parse_platform(spec: str) -> Platform:
    parts = spec.split("/")
    if len(parts) == 1:
        return normalize_platform("linux", parts[0])
    return normalize_platform(parts[0], parts[1], parts[2] if len(parts) > 2 else "")


def platform_vector(p: Platform) -> list[Platform]:
    """``platforms.Only``: the platform then the ones it can also run, best first."""
    out = [p]
    if p.architecture == "amd64":
        m = re.fullmatch(r"v(\d+)", p.variant)
        if m:
            for v in range(int(m.group(1)) - 1, 0, -1):
                out.append(Platform(p.os, "amd64", "" if v == 1 else f"v{v}"))
        out.append(Platform(p.os, "386"))
    elif p.architecture == "arm":
        m = re.fullmatch(r"v(\d+)", p.variant)
        if m:
            for v in range(int(m.group(1)) - 1, 4, -1):
                out.append(Platform(p.os, "arm", f"v{v}"))
    elif p.architecture == "arm64":
        out.extend(platform_vector(Platform(p.os, "arm", "v8")))
    return out


def platform_rank(node: Platform, entry: Mapping[str, Any] | None) -> int | None:
    """Rank of an index entry's platform for ``node`` (lower is better), None = no match.

    An entry without ``platform`` is kept but sorts last (FilterPlatforms / LimitManifests).
    """
    if entry is None:
        return 1_000_000
    cand = normalize_platform(
        str(entry.get("os", "")), str(entry.get("architecture", "")), str(entry.get("variant", ""))
    )
    for i, p in enumerate(platform_vector(node)):
        if (cand.os, cand.architecture) == (p.os, p.architecture) and (cand.variant == p.variant):
            return i
    return None


def select_manifest(index: Mapping[str, Any], node: Platform) -> dict[str, Any] | None:
    """The index entry containerd would pull for ``node``; attestations never match."""
    best: tuple[int, int] | None = None
    chosen: dict[str, Any] | None = None
    for pos, entry in enumerate(index.get("manifests") or []):
        if not isinstance(entry, dict):
            continue
        ann = entry.get("annotations") or {}
        if ann.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        plat = entry.get("platform")
        rank = platform_rank(node, plat if isinstance(plat, dict) else None)
        if rank is None:
            continue
        key = (rank, pos)
        if best is None or key < best:
            best, chosen = key, entry
    return chosen


# --------------------------------------------------------------------------------------
# Auth (authorizer.go / auth/fetch.go)
# --------------------------------------------------------------------------------------


@dataclass
class _Handler:
    scheme: str
    realm: str = ""
    service: str = ""
    scopes: list[str] = field(default_factory=list)
    username: str = ""
    secret: str = ""
    tokens: dict[str, str] = field(default_factory=dict)


@dataclass
class _Resp:
    method: str
    url: str
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes


class _Authorizer:
    def __init__(self, puller: Puller, creds: tuple[str, str] | None, repo_scope: str) -> None:
        self.p = puller
        self.username, self.secret = creds if creds else ("", "")
        self.repo_scope = repo_scope
        self.handlers: dict[str, _Handler] = {}

    async def authorize(self, host: str) -> dict[str, str]:
        h = self.handlers.get(host)
        if h is None:
            return {}
        if h.scheme == "basic":
            import base64

            raw = base64.b64encode(f"{h.username}:{h.secret}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        scopes = sorted(set([self.repo_scope, *h.scopes]))
        key = " ".join(scopes)
        tok = h.tokens.get(key)
        if tok is None:
            tok = await self._bearer(h, scopes)
            h.tokens[key] = tok
        return {"Authorization": f"Bearer {tok}"}

    async def _bearer(self, h: _Handler, scopes: list[str]) -> str:
        if h.secret:
            try:
                return await self._oauth_post(h, scopes)
            except UnexpectedStatus as e:
                if (e.status == 405 and h.username) or e.status in (404, 401, 400):
                    try:
                        return await self._token_get(h, scopes, with_creds=True)
                    except RuntimeErr as e2:
                        raise e2.wrap("failed to fetch oauth token") from None
                raise e.wrap("failed to fetch oauth token") from None
            except RuntimeErr as e:
                raise e.wrap("failed to fetch oauth token") from None
        try:
            return await self._token_get(h, scopes, with_creds=False)
        except RuntimeErr as e:
            raise e.wrap("failed to fetch anonymous token") from None

    async def _token_get(self, h: _Handler, scopes: list[str], *, with_creds: bool) -> str:
        params: list[tuple[str, str]] = []
        base, _, existing = h.realm.partition("?")
        if existing:
            for part in existing.split("&"):
                k, _, v = part.partition("=")
                from urllib.parse import unquote_plus

                params.append((unquote_plus(k), unquote_plus(v)))
        if h.service:
            params.append(("service", h.service))
        params.extend(("scope", s) for s in scopes)
        url = base + ("?" + go_query(params) if params else "")
        auth = (h.username, h.secret) if with_creds else None
        resp = await self.p.raw_request("GET", url, {}, auth=auth, limit=MAX_TOKEN_BODY)
        if resp.status < 200 or resp.status >= 400:
            raise UnexpectedStatus("GET", url, resp.status, resp.reason, resp.body)
        try:
            doc = json.loads(resp.body)
        except ValueError as e:
            raise RuntimeErr(f"unable to decode token response: {e}") from None
        token = ""
        if isinstance(doc, dict):
            token = str(doc.get("access_token") or doc.get("token") or "")
        if not token:
            raise RuntimeErr("authorization server did not include a token in the response")
        return token

    async def _oauth_post(self, h: _Handler, scopes: list[str]) -> str:
        form: list[tuple[str, str]] = [("scope", " ".join(scopes)), ("service", h.service)]
        form.append(("client_id", OAUTH_CLIENT_ID))
        if h.username:
            form += [("grant_type", "password"), ("username", h.username)]
            form.append(("password", h.secret))
        else:
            form += [("grant_type", "refresh_token"), ("refresh_token", h.secret)]
        body = go_query(form).encode()
        resp = await self.p.raw_request(
            "POST",
            h.realm,
            {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            content=body,
            limit=MAX_TOKEN_BODY,
        )
        if resp.status < 200 or resp.status >= 400:
            raise UnexpectedStatus("POST", h.realm, resp.status, resp.reason, resp.body)
        try:
            doc = json.loads(resp.body)
        except ValueError as e:
            raise RuntimeErr(f"unable to decode token response: {e}") from None
        token = str(doc.get("access_token") or "") if isinstance(doc, dict) else ""
        if not token:
            raise RuntimeErr("authorization server did not include a token in the response")
        return token

    def add_responses(self, host: str, responses: list[_Resp]) -> None:
        """AddResponses: returns to retry, raises to fail; ``notimplemented`` = give up."""
        last = responses[-1]
        for c in parse_www_authenticate(last.headers.get_list("www-authenticate")):
            if c.scheme == "bearer":
                err = c.params.get("error", "")
                if err:
                    n = len(responses)
                    same = n > 1 and (
                        responses[-2].method == responses[-1].method
                        and responses[-2].url == responses[-1].url
                    )
                    if n == 1 or not same:
                        self.handlers.pop(host, None)
                    else:
                        self.handlers.pop(host, None)
                        raise RuntimeErr(
                            f"server message: {err}: authorization failed", "invalidauth"
                        )
                if host in self.handlers:
                    return
                realm = c.params.get("realm")
                if not realm:
                    raise RuntimeErr("no realm specified for token auth challenge")
                scope = c.params.get("scope")
                self.handlers[host] = _Handler(
                    "bearer",
                    realm=realm,
                    service=c.params.get("service", ""),
                    scopes=scope.split(" ") if scope else [],
                    username=self.username,
                    secret=self.secret,
                )
                return
            if c.scheme == "basic":
                if not self.username or not self.secret:
                    # containerd 1.6: no handler, so the 401 itself is what resolve sees.
                    raise RuntimeErr(
                        "failed to find supported auth scheme: not implemented", "notimplemented"
                    )
                self.handlers[host] = _Handler("basic", username=self.username, secret=self.secret)
                return
        raise RuntimeErr("failed to find supported auth scheme: not implemented", "notimplemented")


# --------------------------------------------------------------------------------------
# The puller
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What to pull: ``full`` is the normalised reference containerd names the image by."""

    full: str  # e.g. "docker.io/library/nginx:1.27" or "host:5000/a/b@sha256:..."
    domain: str  # "docker.io", "127.0.0.1:5000"
    path: str  # "library/nginx"
    obj: str  # tag or digest to resolve

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"


@dataclass(frozen=True)
class PullResult:
    image_id: str  # config digest ("sha256:...")
    repo_digest: str  # "<domain>/<path>@<resolved digest>"
    digest: str  # resolved (top-level) digest
    size: int  # platform manifest + config + layers, bytes
    pull_seconds: float


@dataclass(frozen=True)
class _Host:
    scheme: str
    host: str
    mirror_of: str = ""  # namespace when this host is a mirror (adds ?ns=)


def is_loopback_host(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Puller:
    """containerd's remote side: resolve, fetch index/manifest/config/layers.

    ``plain_http``: use http:// for loopback registries (the sandbox's are all plain HTTP);
    ``external``: allow contacting non-loopback registries (off = an air-gapped node whose
    DNS knows no registries, so such pulls fail like ``lookup ...: no such host``);
    ``mirrors``: registry domain -> mirror base URLs tried first, like containerd hosts.toml.
    """

    def __init__(
        self,
        platform: str = "linux/amd64",
        *,
        plain_http: bool = True,
        external: bool = False,
        mirrors: Mapping[str, Sequence[str]] | None = None,
        timeout: float = 30.0,
        retry_sleep: float = 0.05,
        keep_content: bool = False,
    ) -> None:
        self.platform = parse_platform(platform)
        # containerd's content store: a descriptor already fetched (and verified) is not
        # fetched again, so a re-pull of a present image only resolves its reference
        self.keep_content = keep_content
        self._content: dict[str, bytes] = {}  # manifests and configs by digest
        self._layers: dict[str, int] = {}  # layer digest -> size
        self.plain_http = plain_http
        self.external = external
        self.mirrors = {k: list(v) for k, v in (mirrors or {}).items()}
        self.retry_sleep = retry_sleep
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- low-level HTTP ----------------------------------------------------------------

    async def raw_request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        auth: tuple[str, str] | None = None,
        content: bytes | None = None,
        limit: int = MAX_MANIFEST_SIZE,
        follow: int = 10,
    ) -> _Resp:
        """One HTTP exchange (following redirects like Go does); transport errors raise."""
        host = urlsplit(url).netloc
        if not self.external and not is_loopback_host(host):
            hostname = urlsplit(url).hostname or host
            op = method[:1].upper() + method[1:].lower()
            raise RuntimeErr(
                f'{op} "{url}": dial tcp: lookup {hostname} on 127.0.0.53:53: no such host'
            )
        hdrs = dict(headers)
        cur = url
        for _ in range(follow + 1):
            try:
                req = self._client.build_request(
                    method,
                    cur,
                    headers=hdrs,
                    content=content,
                )
                if auth is not None:
                    import base64

                    raw = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
                    req.headers["Authorization"] = f"Basic {raw}"
                resp = await self._client.send(req, stream=True)
            except httpx.TransportError as e:
                raise RuntimeErr(go_transport_error(method, cur, e)) from None
            try:
                body = b""
                if method != "HEAD":
                    chunks: list[bytes] = []
                    got = 0
                    async for chunk in resp.aiter_bytes():
                        got += len(chunk)
                        if got > limit:
                            break
                        chunks.append(chunk)
                    body = b"".join(chunks)
            except httpx.TransportError as e:
                raise RuntimeErr(go_transport_error(method, cur, e)) from None
            finally:
                await resp.aclose()
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                nxt = str(resp.url.join(resp.headers["location"]))
                if urlsplit(nxt).netloc != urlsplit(cur).netloc:
                    hdrs.pop("Authorization", None)
                    auth = None
                cur = nxt
                if resp.status_code == 303:
                    method = "GET"
                continue
            return _Resp(
                method,
                url,
                resp.status_code,
                go_status(resp.status_code, resp.reason_phrase),
                resp.headers,
                body,
            )
        raise RuntimeErr(f'{method[:1]}{method[1:].lower()} "{url}": stopped after 10 redirects')

    async def _do(
        self,
        az: _Authorizer,
        host: _Host,
        method: str,
        path: str,
        headers: Mapping[str, str],
        limit: int = MAX_MANIFEST_SIZE,
    ) -> _Resp:
        """``request.doWithRetries``: authorize, send, react to 401/405/408/429."""
        responses: list[_Resp] = []
        while True:
            url = f"{host.scheme}://{host.host}{path}"
            if host.mirror_of:
                url += ("&" if "?" in url else "?") + go_query([("ns", host.mirror_of)])
            try:
                auth_headers = await az.authorize(host.host)
            except RuntimeErr as e:
                raise e.wrap("failed to authorize") from None
            try:
                resp = await self.raw_request(method, url, {**headers, **auth_headers}, limit=limit)
            except RuntimeErr as e:
                raise e.wrap("failed to do request") from None
            responses.append(resp)
            if len(responses) > _MAX_RESPONSES:
                return resp
            if resp.status == 401:
                try:
                    az.add_responses(host.host, responses)
                except RuntimeErr as e:
                    if e.kind == "notimplemented":
                        return resp
                    raise
                continue
            if resp.status == 405 and method == "HEAD" and "/manifests/" in path:
                method = "GET"
                continue
            if resp.status in (408, 429):
                await asyncio.sleep(self.retry_sleep * len(responses))
                continue
            return resp

    def hosts_for(self, domain: str) -> list[_Host]:
        hosts: list[_Host] = []
        for m in self.mirrors.get(domain, []):
            parts = urlsplit(m if "://" in m else f"https://{m}")
            hosts.append(_Host(parts.scheme or "https", parts.netloc, mirror_of=domain))
        origin = DOCKER_HUB_HOST if domain == DOCKER_HUB_DOMAIN else domain
        scheme = "http" if (self.plain_http and is_loopback_host(origin)) else "https"
        hosts.append(_Host(scheme, origin))
        return hosts

    # -- resolve -----------------------------------------------------------------------

    async def _resolve(
        self, az: _Authorizer, target: Target, hosts: list[_Host]
    ) -> tuple[_Host, str, str, int]:
        """dockerResolver.Resolve: (host, digest, media type, size)."""
        is_digest = target.obj.startswith("sha256:") or ":" in target.obj
        paths = [f"/v2/{target.path}/manifests/{target.obj}"]
        if is_digest:
            paths.append(f"/v2/{target.path}/blobs/{target.obj}")
        first: RuntimeErr | None = None
        prio = 0
        for p in paths:
            for h in hosts:
                try:
                    resp = await self._do(az, h, "HEAD", p, {"Accept": RESOLVE_ACCEPT})
                except RuntimeErr as e:
                    if e.kind == "invalidauth":
                        e = e.wrap(
                            "pull access denied, repository does not exist or may require "
                            "authorization"
                        )
                    if prio < 1:
                        first, prio = e, 1
                    continue
                if resp.status > 299:
                    if resp.status == 404:
                        if prio < 2:
                            first, prio = RuntimeErr(f"{target.full}: not found", "notfound"), 2
                        continue
                    # containerd 1.6 names the host and the path parts, Go %v of a slice.
                    where = f"[{p.split('/')[-2]} {target.obj}]"
                    status = f"{resp.status} {go_status(resp.status, resp.reason)}"
                    if resp.status > 399:
                        if prio < 3:
                            first = RuntimeErr(
                                f"pulling from host {h.host} failed with status code "
                                f"{where}: {status}",
                                "unexpected",
                            )
                            prio = 3
                        continue
                    raise RuntimeErr(
                        f"pulling from host {h.host} failed with unexpected status code "
                        f"{where}: {status}",
                        "unexpected",
                    )
                ctype = resp.headers.get("content-type", "").split(";")[0].strip()
                if ctype == "text/plain":
                    ctype = "application/vnd.docker.distribution.manifest.v1+prettyjws"
                dgst = target.obj if is_digest else ""
                size = int(resp.headers.get("content-length", "-1") or -1)
                if not dgst:
                    hdr = resp.headers.get("docker-content-digest", "")
                    if hdr and size != -1:
                        dgst = hdr
                if not dgst or size == -1:
                    g = await self._do(az, h, "GET", p, {"Accept": RESOLVE_ACCEPT})
                    ctype = g.headers.get("content-type", "").split(";")[0].strip()
                    if not dgst:
                        if ctype in SCHEMA1_TYPES:
                            raise RuntimeErr(
                                f'not implemented: media type "{ctype}" is no longer supported '
                                "since containerd v2.0, please rebuild the image as "
                                '"application/vnd.docker.distribution.manifest.v2+json" or '
                                '"application/vnd.oci.image.manifest.v1+json"',
                                "notimplemented",
                            )
                        dgst = "sha256:" + hashlib.sha256(g.body).hexdigest()
                    size = len(g.body)
                if size > MAX_MANIFEST_SIZE:
                    if prio < 4:
                        first = RuntimeErr(
                            f"rejecting {size} byte manifest for {target.full}: not found",
                            "notfound",
                        )
                        prio = 4
                    continue
                return h, dgst, ctype, size
        if first is None:
            first = RuntimeErr(f"{target.full}: not found", "notfound")
        raise first

    async def _fetch(
        self,
        az: _Authorizer,
        hosts: list[_Host],
        target: Target,
        kind: str,
        desc: Mapping[str, Any],
        limit: int,
    ) -> bytes:
        """dockerFetcher.Fetch of one descriptor (manifests or blobs), verified."""
        dgst = str(desc.get("digest", ""))
        mtype = str(desc.get("mediaType", ""))
        last: RuntimeErr | None = None
        for h in hosts:
            path = f"/v2/{target.path}/{kind}/{dgst}"
            headers = {"Accept": f"{mtype}, */*" if mtype else "*/*"}
            try:
                resp = await self._do(az, h, "GET", path, headers, limit=limit)
            except RuntimeErr as e:
                last = e
                continue
            url = f"{h.scheme}://{h.host}{path}"
            if resp.status == 404:
                last = RuntimeErr(
                    f"failed to copy: httpReadSeeker: failed open: content at {url} not found: "
                    "not found",
                    "notfound",
                )
                continue
            if resp.status > 299:
                last = RuntimeErr(
                    "failed to copy: httpReadSeeker: failed open: unexpected status code "
                    f"{url}: {resp.status} {resp.reason}"
                )
                continue
            got = "sha256:" + hashlib.sha256(resp.body).hexdigest()
            if dgst.startswith("sha256:") and got != dgst:
                raise RuntimeErr(
                    f"failed to copy: failed precondition: unexpected commit digest {got}, "
                    f"expected {dgst}"
                )
            return resp.body
        assert last is not None
        raise last

    async def _kept(
        self,
        az: _Authorizer,
        hosts: list[_Host],
        target: Target,
        kind: str,
        desc: Mapping[str, Any],
        limit: int,
    ) -> bytes:
        """:meth:`_fetch`, from the content store when ``keep_content`` and present."""
        dgst = str(desc.get("digest", ""))
        if self.keep_content and dgst in self._content:
            return self._content[dgst]
        body = await self._fetch(az, hosts, target, kind, desc, limit)
        if self.keep_content and dgst.startswith("sha256:"):
            self._content[dgst] = body  # verified against the digest by _fetch
        return body

    async def pull(self, target: Target, creds: tuple[str, str] | None = None) -> PullResult:
        """One CRI ``PullImage`` with at most one credential; raises :class:`PullError`."""
        started = time.monotonic()
        az = _Authorizer(self, creds, f"repository:{target.path}:pull")
        hosts = self.hosts_for(target.domain)
        try:
            try:
                host, dgst, mtype, size = await self._resolve(az, target, hosts)
            except RuntimeErr as e:
                raise e.wrap(f'failed to resolve reference "{target.full}"') from None
            order = [host, *[h for h in hosts if h != host]]
            root = {"digest": dgst, "mediaType": mtype, "size": size}
            body = await self._kept(az, order, target, "manifests", root, MAX_MANIFEST_SIZE)
            doc = _json(body)
            mtype = mtype or str(doc.get("mediaType", ""))
            if mtype in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
                entry = select_manifest(doc, self.platform)
                if entry is None:
                    raise RuntimeErr("no match for platform in manifest: not found", "notfound")
                body = await self._kept(az, order, target, "manifests", entry, MAX_MANIFEST_SIZE)
                doc = _json(body)
            total = len(body)
            config = doc.get("config") or {}
            if not isinstance(config, dict) or not config.get("digest"):
                raise RuntimeErr(
                    f"failed to unpack image: invalid manifest for {target.full}", "unknown"
                )
            cfg = await self._kept(az, order, target, "blobs", config, MAX_MANIFEST_SIZE)
            total += len(cfg)
            for layer in doc.get("layers") or []:
                if isinstance(layer, dict) and layer.get("digest"):
                    ldg = str(layer["digest"])
                    size = self._layers.get(ldg) if self.keep_content else None
                    if size is None:
                        blob = await self._fetch(az, order, target, "blobs", layer, MAX_BLOB_SIZE)
                        size = len(blob)
                        if self.keep_content and ldg.startswith("sha256:"):
                            self._layers[ldg] = size
                    total += size
        except RuntimeErr as e:
            raise to_pull_error(target.full, e) from None
        return PullResult(
            image_id=str(config["digest"]),
            repo_digest=f"{target.name}@{dgst}",
            digest=dgst,
            size=total,
            pull_seconds=time.monotonic() - started,
        )


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise RuntimeErr(f"failed to unmarshal manifest: {e}") from None
    if not isinstance(doc, dict):
        raise RuntimeErr("failed to unmarshal manifest: not an object")
    return doc
