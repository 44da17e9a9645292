"""The webhook's certificates kept by the operator itself, for clusters without cert-manager.

One Secret holds the CA, its key and the serving pair; every replica reads it, renews it
when due (a write with a resourceVersion precondition, so two replicas never both win),
keeps the ``caBundle`` of its webhook configuration equal to the Secret's trusted CAs, and
writes the serving pair to files the webhook reloads. The order matters: the API server
must trust a new CA before any replica serves a certificate it signed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pullmedic.admission import certs
from pullmedic.kube.client import KubeApi, KubeError
from pullmedic.telemetry import metrics

log = logging.getLogger(__name__)

CONFIGURATION_KIND = "MutatingWebhookConfiguration"
MANAGED_BY = ("app.kubernetes.io/managed-by", "pullmedic")


@dataclass(frozen=True)
class TLSSettings:
    namespace: str
    secret: str = "pullmedic-webhook-tls"
    service: str = "pullmedic-webhook"
    configuration: str = "pullmedic"  # the MutatingWebhookConfiguration to keep current
    directory: str = ""  # where the serving pair is written ("": a private temp dir)
    ca_validity: float = 10 * 365 * 86400.0
    serving_validity: float = 90 * 86400.0
    addresses: tuple[str, ...] = ()  # IP SANs, for a webhook reached by address
    # How long the API server takes to see a new caBundle before a replica serves a
    # certificate from a new CA.
    propagation: float = 5.0

    def check_interval(self) -> float:
        """Often enough to renew a short-lived certificate in time, at most every minute."""
        return max(1.0, min(60.0, self.serving_validity / 10))


def _decode(secret: Mapping[str, Any] | None) -> dict[str, bytes] | None:
    if secret is None:
        return None
    out: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True)
        except ValueError:
            continue  # a hand-edited value: renew() finds the bundle unusable
    return out


def _encode(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


class SelfManagedTLS:
    def __init__(
        self,
        kube: KubeApi,
        settings: TLSSettings,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_change: Callable[[], object] | None = None,
    ) -> None:
        self.kube = kube
        self.s = settings
        self.clock = clock
        self.on_change = on_change
        folder = settings.directory or tempfile.mkdtemp(prefix="pullmedic-webhook-")
        self.dir = Path(folder)
        self._served: bytes = b""  # the serving certificate in the files
        self._served_ca: bytes = b""  # the CA that signed it

    @property
    def cert_file(self) -> str:
        return str(self.dir / "tls.crt")

    @property
    def key_file(self) -> str:
        return str(self.dir / "tls.key")

    @property
    def names(self) -> list[str]:
        return certs.dns_names(self.s.service, self.s.namespace)

    async def ensure(self) -> bool:
        """Bring the Secret, the caBundle and the files up to date; True when the files
        changed. Raises on an API failure (the supervisor retries with back-off)."""
        for _attempt in range(3):
            secret = await self.kube.get("Secret", self.s.namespace, self.s.secret)
            renewal = certs.renew(
                _decode(secret),
                self.clock(),
                self.names,
                ca_validity=dt.timedelta(seconds=self.s.ca_validity),
                serving_validity=dt.timedelta(seconds=self.s.serving_validity),
                addresses=self.s.addresses,
            )
            if renewal.changed:
                try:
                    await self._store(secret, renewal.bundle)
                except KubeError as e:
                    if e.status in (409, 422):  # another replica renewed first: read it
                        continue
                    raise
                metrics.WEBHOOK_CERT_RENEWALS.inc()
                log.info(
                    "webhook certificate renewed (%s); serving until %s",
                    renewal.reason,
                    renewal.bundle.serving.not_after().isoformat(),
                )
            published = await self._publish(renewal.bundle.trusted)
            return await self._serve(renewal.bundle, published)
        raise RuntimeError("the webhook TLS Secret kept changing under us")

    async def _store(self, secret: Mapping[str, Any] | None, bundle: certs.Bundle) -> None:
        data = _encode(bundle.as_secret_data())
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": self.s.secret,
                    "namespace": self.s.namespace,
                    "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
                },
                "type": "kubernetes.io/tls",
                "data": data,
            }
            await self.kube.create("Secret", self.s.namespace, body)
            return
        version = (secret.get("metadata") or {}).get("resourceVersion", "")
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "replace" if "data" in secret else "add", "path": "/data", "value": data},
        ]
        await self.kube.json_patch("Secret", self.s.namespace, self.s.secret, ops)

    async def _publish(self, trusted: bytes) -> bool:
        """Every webhook of our configuration trusts ``trusted``; True when one changed."""
        conf = await self.kube.get(CONFIGURATION_KIND, "", self.s.configuration)
        if conf is None:
            log.warning(
                "webhook configuration %s not found; its caBundle cannot be kept current",
                self.s.configuration,
            )
            return False
        bundle = base64.b64encode(trusted).decode()
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(conf.get("webhooks") or []):
            current = (hook.get("clientConfig") or {}).get("caBundle")
            if current == bundle:
                continue
            path = f"/webhooks/{i}/clientConfig/caBundle"
            if current is None:
                ops.append({"op": "add", "path": path, "value": bundle})
            else:
                ops += [
                    {"op": "test", "path": path, "value": current},
                    {"op": "replace", "path": path, "value": bundle},
                ]
        if not ops:
            return False
        await self.kube.json_patch(CONFIGURATION_KIND, "", self.s.configuration, ops)
        log.info("webhook configuration %s now trusts the current CA", self.s.configuration)
        return True

    async def _serve(self, bundle: certs.Bundle, published: bool) -> bool:
        if bundle.serving.cert == self._served:
            return False
        if published and self._served and self._served_ca != bundle.ca.cert:
            # A new CA: let the API server see it before we present what it signed (the
            # certificate we serve now is from the old CA, still trusted meanwhile).
            await asyncio.sleep(self.s.propagation)
        self.dir.mkdir(parents=True, exist_ok=True)
        _write(self.dir / "tls.key", bundle.serving.key, 0o600)
        _write(self.dir / "tls.crt", bundle.serving.cert, 0o644)  # last: it triggers reload
        self._served, self._served_ca = bundle.serving.cert, bundle.ca.cert
        metrics.WEBHOOK_CERT_EXPIRY.set(bundle.serving.not_after().timestamp())
        if self.on_change is not None:
            self.on_change()
        return True


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` at once: the server never reads half a key."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
