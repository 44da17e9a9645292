"""KEP-4412 token mode's Kubernetes side: a pod's ServiceAccount and a token for it.

The kubelet gives a token-mode credential provider the pod's ServiceAccount token (for the
provider's audience, bound to the pod) and some of the ServiceAccount's annotations. To run
the plugin as the kubelet does, pullmedic reads the ServiceAccount (``get`` on
serviceaccounts, a grant it holds already) and mints a token with the TokenRequest API
(``create`` on ``serviceaccounts/token``). The token goes to the plugin's stdin only: it is
never logged, cached in the clear, or put in an error.
"""

from __future__ import annotations

from collections.abc import Mapping

from pullmedic.core.tokenmode import ServiceAccountInfo
from pullmedic.kube.client import KubeApi, KubeError

__all__ = ["KubeServiceAccounts", "TokenRequestError"]


class TokenRequestError(Exception):
    """The TokenRequest was refused; the message says why and never holds a token."""


class KubeServiceAccounts:
    """``core.credentialprovider.ServiceAccounts`` over the ``KubeApi`` seam."""

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    async def service_account(self, namespace: str, name: str) -> ServiceAccountInfo | None:
        obj = await self.kube.get("ServiceAccount", namespace, name)
        return None if obj is None else ServiceAccountInfo.of(obj)

    async def token(self, namespace: str, name: str, request: Mapping[str, object]) -> str:
        try:
            answer = await self.kube.create_token(namespace, name, request)
        except KubeError as exc:
            hint = (
                " (pullmedic's role lacks create on serviceaccounts/token: see the README, "
                "Cloud registries)"
                if exc.status == 403
                else ""
            )
            raise TokenRequestError(
                f"the TokenRequest for {namespace}/{name} failed: {exc}{hint}"
            ) from None
        status = answer.get("status")
        token = status.get("token") if isinstance(status, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenRequestError(f"the TokenRequest for {namespace}/{name} gave no token")
        return token
