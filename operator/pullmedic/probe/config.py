"""Limits and trust settings for registry probing, shared by every part of the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from pullmedic.probe.netguard import AddressPolicy

MiB = 1 << 20


@dataclass(frozen=True)
class ClientConfig:
    """Limits and trust settings for registry probing; immutable so it can be shared."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    operation_timeout: float = 30.0
    max_manifest_bytes: int = 4 * MiB
    max_token_bytes: int = 1 * MiB
    max_config_bytes: int = 1 * MiB
    max_error_bytes: int = 64 * 1024
    max_tags_bytes: int = 4 * MiB
    max_tags_pages: int = 10
    tags_page_size: int = 1000
    max_redirects: int = 3
    max_verified_blobs: int = 128  # config + layers checked per image; more is not verified
    insecure_hosts: frozenset[str] = frozenset()
    address_policy: AddressPolicy = field(default_factory=AddressPolicy)
    user_agent: str = "pullmedic/0.1 (+registry probe)"
    verify_tls: bool = True
    per_host_concurrency: int = 8
    per_host_rate: float = 20.0
    per_host_burst: int = 40
    max_backoff_wait: float = 0.0
    ping_ttl: float = 300.0
    cache_auth: bool = True  # share pings and tokens; False only for naive baselines
    # Manifests and configs read by digest, kept for the life of the process (0: none).
    content_cache_bytes: int = 64 * MiB
    # Manifest GETs stop while a host's ratelimit-remaining is at or below this fraction
    # of its ratelimit-limit: the rest of the quota is the nodes' (HEAD is not counted).
    quota_reserve: float = 0.2

    def is_insecure(self, host: str) -> bool:
        return host.lower() in self.insecure_hosts

    def scheme_for(self, host: str) -> str:
        return "http" if self.is_insecure(host) else "https"

    def base_url(self, host: str) -> str:
        return f"{self.scheme_for(host)}://{host}"
