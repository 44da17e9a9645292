"""A Docker-Hub-style token server for the sandbox's bearer registry.

cesanta/docker_auth cannot be fetched here, so this stands in for it: it issues real
ES256 JWTs that the real distribution registry verifies against the self-signed
certificate given to it as ``rootcertbundle``. Behaviour copied from docker_auth / Docker
Hub because the prober must cope with exactly that flow:

* ``GET /token?service=..&scope=..&scope=..`` with optional Basic credentials, and the
  OAuth2 ``POST /token`` form (``grant_type=password|refresh_token``).
* Unknown user or wrong password -> 401 (not an anonymous token).
* A scope the account may not have still yields a token, holding only the intersection
  of asked and allowed actions; the registry then answers 401 ``insufficient_scope``.

How distribution v3 finds the verification key (registry/auth/token/token.go): the JWT
header's ``x5c`` chain is checked against the rootcertbundle; without ``x5c`` it looks the
``kid`` up among the trusted keys, which are the bundle's public keys named by their
RFC 7638 JWK thumbprint (SHA-256, base64url). We send ``kid`` by default (``x5c`` on
request). ``iss`` must equal the configured issuer, ``aud`` contain the service.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from sandbox.pki import self_signed_ca

DEFAULT_SERVICE = "sandbox-registry"
DEFAULT_ISSUER = "sandbox-token-server"
# Low bcrypt cost: the server verifies a password per token request and benchmarks
# should measure the prober, not bcrypt.
BCRYPT_ROUNDS = 4


@dataclass(frozen=True)
class AclRule:
    """First rule whose account and repository glob match decides the allowed actions."""

    account: str  # exact account name; "" is anonymous, "*" any account (incl. anonymous)
    name: str  # fnmatch glob on the repository path
    actions: tuple[str, ...]
    type: str = "repository"


DEFAULT_PASSWORDS: dict[str, str] = {"bob": "bob-secret", "pusher": "pusher-secret"}

DEFAULT_ACL: tuple[AclRule, ...] = (
    AclRule("pusher", "*", ("pull", "push", "delete")),
    AclRule("bob", "private/*", ("pull",)),
    AclRule("bob", "public/*", ("pull",)),
    AclRule("", "public/*", ("pull",)),
)


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """``type[(class)]:name:actions``; the name may itself hold a ``:`` (host:port)."""
        head, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not head or not name:
            return None
        typ = head.split("(", 1)[0]
        return cls(typ, name, tuple(a for a in actions.split(",") if a))


@dataclass
class IssuedToken:
    """What one request was granted, kept so tests can assert on it."""

    account: str
    service: str
    requested: list[Scope]
    granted: list[dict[str, Any]]


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    tokens: int = 0
    auth_failures: int = 0
    issued: list[IssuedToken] = field(default_factory=list)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n: int) -> str:
    # Go's big.Int.Bytes(): minimal big-endian, no leading zeros - the thumbprint must match.
    return _b64(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint computed exactly like distribution's GetJWKThumbprint."""
    nums = public_key.public_numbers()
    payload = f'{{"crv":"P-256","kty":"EC","x":"{_int_b64(nums.x)}","y":"{_int_b64(nums.y)}"}}'
    return _b64(hashlib.sha256(payload.encode()).digest())


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


class TokenServer:
    """Threaded HTTP token server; ``start()`` returns the realm URL (``.../token``)."""

    def __init__(
        self,
        workdir: Path,
        *,
        passwords: Mapping[str, str] | None = None,
        acl: Sequence[AclRule] = DEFAULT_ACL,
        issuer: str = DEFAULT_ISSUER,
        service: str = DEFAULT_SERVICE,
        ttl: int = 300,
        key_header: Literal["kid", "x5c"] = "kid",
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        plain = DEFAULT_PASSWORDS if passwords is None else passwords
        # Only bcrypt hashes are kept, as docker_auth's static users file does.
        self.users: dict[str, bytes] = {u: hash_password(p).encode() for u, p in plain.items()}
        self.acl = list(acl)
        self.issuer = issuer
        self.service = service
        self.ttl = ttl
        self.key_header = key_header
        self.host = host
        self.cert_path = self.workdir / "token-signing.crt"
        self.key_path = self.workdir / "token-signing.key"
        self._key, self._cert = self._make_keypair()
        self.kid = jwk_thumbprint(self._key.public_key())
        self._refresh: dict[str, str] = {}
        self._stats = _Stats()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- keys -------------------------------------------------------------------------
    def _make_keypair(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self_signed_ca(self.issuer, key)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.key_path.chmod(0o600)
        return key, cert

    # --- tokens -----------------------------------------------------------------------
    def sign(self, claims: Mapping[str, Any]) -> str:
        """Compact JWS, ES256 (raw r||s signature as RFC 7518 wants, not DER)."""
        header: dict[str, Any] = {"typ": "JWT", "alg": "ES256"}
        if self.key_header == "x5c":
            der = self._cert.public_bytes(serialization.Encoding.DER)
            header["x5c"] = [base64.b64encode(der).decode()]
        else:
            header["kid"] = self.kid
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        der_sig = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)
        return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def allowed(self, account: str, scope: Scope) -> list[str]:
        """Intersection of asked and allowed actions under the first matching rule."""
        for rule in self.acl:
            if rule.type != scope.type:
                continue
            if rule.account not in ("*", account):
                continue
            if not fnmatch.fnmatchcase(scope.name, rule.name):
                continue
            if "*" in rule.actions:
                return list(scope.actions)
            return [a for a in scope.actions if a in rule.actions]
        return []

    def issue(self, account: str, service: str, scopes: Iterable[Scope]) -> tuple[str, int]:
        scopes = list(scopes)
        access: list[dict[str, Any]] = []
        for sc in scopes:
            acts = self.allowed(account, sc)
            if acts:
                access.append({"type": sc.type, "name": sc.name, "actions": acts})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account,
            "aud": service,
            "exp": now + self.ttl,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        with self._stats.lock:
            self._stats.tokens += 1
            self._stats.issued.append(IssuedToken(account, service, scopes, access))
        return self.sign(claims), now

    def check_password(self, user: str, password: str) -> bool:
        hashed = self.users.get(user)
        if hashed is None:
            # Burn comparable time so unknown users are not distinguishable by timing.
            bcrypt.checkpw(password.encode(), hash_password("x").encode())
            return False
        return bcrypt.checkpw(password.encode(), hashed)

    # --- counters ---------------------------------------------------------------------
    @property
    def request_count(self) -> int:
        """HTTP requests served (any path, any outcome); benchmarks diff this."""
        with self._stats.lock:
            return self._stats.requests

    @property
    def token_count(self) -> int:
        with self._stats.lock:
            return self._stats.tokens

    @property
    def auth_failures(self) -> int:
        with self._stats.lock:
            return self._stats.auth_failures

    @property
    def issued(self) -> list[IssuedToken]:
        with self._stats.lock:
            return list(self._stats.issued)

    def reset_counters(self) -> None:
        with self._stats.lock:
            self._stats.requests = self._stats.tokens = self._stats.auth_failures = 0
            self._stats.issued.clear()

    def _count_request(self) -> None:
        with self._stats.lock:
            self._stats.requests += 1

    def _count_auth_failure(self) -> None:
        with self._stats.lock:
            self._stats.auth_failures += 1

    def new_refresh_token(self, account: str) -> str:
        tok = secrets.token_urlsafe(24)
        with self._stats.lock:
            self._refresh[tok] = account
        return tok

    def refresh_account(self, token: str) -> str | None:
        with self._stats.lock:
            return self._refresh.get(token)

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> str:
        server = ThreadingHTTPServer((self.host, 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="sandbox-token-server", daemon=True
        )
        self._thread.start()
        self.url = f"http://{self.host}:{server.server_address[1]}/token"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _make_handler(ts: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "sandbox-token-server/1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: pytest output stays readable

        def _send_json(
            self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _unauthorized(self) -> None:
            ts._count_auth_failure()
            self._send_json(
                HTTPStatus.UNAUTHORIZED,
                {"details": "incorrect username or password"},
                {"WWW-Authenticate": f'Basic realm="{ts.issuer}"'},
            )

        def _basic_account(self) -> str | None:
            """Anonymous "", the user name when credentials check out, None if wrong."""
            header = self.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            if not header:
                return ""
            if scheme.lower() != "basic":
                return None
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user if ts.check_password(user, password) else None

        def _token_body(self, token: str, issued: int) -> dict[str, Any]:
            iso = dt.datetime.fromtimestamp(issued, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return {
                "token": token,
                "access_token": token,
                "expires_in": ts.ttl,
                "issued_at": iso,
            }

        def do_GET(self) -> None:
            ts._count_request()
            url = urlsplit(self.path)
            if url.path != "/token":
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            q = parse_qs(url.query)
            account = self._basic_account()
            if account is None:
                self._unauthorized()
                return
            service = q.get("service", [ts.service])[0]
            scopes = [s for raw in q.get("scope", []) if (s := Scope.parse(raw)) is not None]
            token, issued = ts.issue(account, service, scopes)
            body = self._token_body(token, issued)
            if account and q.get("offline_token", [""])[0] == "true":
                body["refresh_token"] = ts.new_refresh_token(account)
            self._send_json(HTTPStatus.OK, body)

        def do_POST(self) -> None:
            ts._count_request()
            if urlsplit(self.path).path != "/token":
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode(errors="replace"))

            def one(key: str) -> str:
                return form.get(key, [""])[0]

            grant = one("grant_type")
            account: str | None
            if grant == "password":
                account = one("username")
                if not ts.check_password(account, one("password")):
                    self._unauthorized()
                    return
            elif grant == "refresh_token":
                account = ts.refresh_account(one("refresh_token"))
                if account is None:
                    self._unauthorized()
                    return
            else:
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": "unsupported_grant_type"})
                return
            service = one("service") or ts.service
            raw_scopes = " ".join(form.get("scope", [])).split()
            scopes = [s for raw in raw_scopes if (s := Scope.parse(raw)) is not None]
            token, issued = ts.issue(account, service, scopes)
            body = self._token_body(token, issued)
            body["scope"] = " ".join(raw_scopes)
            if grant == "password" and one("access_type") == "offline":
                body["refresh_token"] = ts.new_refresh_token(account)
            self._send_json(HTTPStatus.OK, body)

    return Handler
