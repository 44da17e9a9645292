"""Address policy: what the prober refuses to connect to, and how the allowlist admits."""

from __future__ import annotations

import pytest

from pullmedic.probe.netguard import AddressPolicy, BlockedAddress, ResolutionFailed

DEFAULT = AddressPolicy()


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("fd00:ec2::254", "unique-local"),
        ("fc00::1", "unique-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("192.0.2.1", "private"),  # documentation range: not public
    ],
)
def test_refused_by_default(ip: str, why: str) -> None:
    assert not DEFAULT.is_allowed_ip(ip)
    reason = DEFAULT.why_blocked(ip)
    assert reason is not None and why.lower() in reason.lower()


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "100.128.0.1"])
def test_public_allowed(ip: str) -> None:
    assert DEFAULT.is_allowed_ip(ip)


@pytest.mark.parametrize(
    ("allow", "ip", "ok"),
    [
        (("127.0.0.0/8",), "127.0.0.1", True),
        (("127.0.0.0/8",), "::ffff:127.0.0.1", True),
        (("127.0.0.0/8",), "10.0.0.1", False),
        (("10.0.0.0/8",), "10.200.0.1", True),
        (("10.0.0.5",), "10.0.0.5", True),
        (("10.0.0.5",), "10.0.0.6", False),
        (("fd00::/8",), "fd00:ec2::254", True),
        (("registry.internal",), "169.254.169.254", False),  # host patterns do not admit IPs
    ],
)
def test_allowlist_networks(allow: tuple[str, ...], ip: str, ok: bool) -> None:
    assert AddressPolicy(allow).is_allowed_ip(ip) is ok


@pytest.mark.parametrize(
    ("allow", "host", "port", "ok"),
    [
        (("registry.internal",), "registry.internal", 443, True),
        (("registry.internal",), "REGISTRY.internal.", 5000, True),
        (("registry.internal:5000",), "registry.internal", 5000, True),
        (("registry.internal:5000",), "registry.internal", 443, False),
        (("*.corp.example",), "a.corp.example", 443, True),
        (("*.corp.example",), "corp.example", 443, False),
        (("*.corp.example",), "evilcorp.example", 443, False),
        ((), "registry.internal", 443, False),
    ],
)
def test_allowlist_hosts(allow: tuple[str, ...], host: str, port: int, ok: bool) -> None:
    assert AddressPolicy(allow).is_allowed_host(host, port) is ok


def test_bad_allow_entry_rejected() -> None:
    with pytest.raises(ValueError):
        AddressPolicy(("not a host/with spaces:xx:yy[",))


async def test_resolve_literal_metadata_refused() -> None:
    with pytest.raises(BlockedAddress) as err:
        await DEFAULT.resolve_and_check("169.254.169.254", 80)
    assert "link-local" in err.value.reason
    assert "169.254.169.254" in str(err.value)


async def test_resolve_bracketed_ipv6_refused() -> None:
    with pytest.raises(BlockedAddress):
        await DEFAULT.resolve_and_check("[fd00:ec2::254]", 443)


async def test_resolve_localhost_name_refused_unless_allowed() -> None:
    with pytest.raises(BlockedAddress):
        await DEFAULT.resolve_and_check("localhost", 10250)
    ip = await AddressPolicy(("127.0.0.0/8", "::1/128")).resolve_and_check("localhost", 10250)
    assert ip in ("127.0.0.1", "::1")


async def test_resolve_allowed_literal_returns_ip() -> None:
    assert await AddressPolicy(("127.0.0.0/8",)).resolve_and_check("127.0.0.1", 5000) == (
        "127.0.0.1"
    )


async def test_resolution_failure_is_distinct() -> None:
    with pytest.raises(ResolutionFailed):
        await DEFAULT.resolve_and_check("does-not-exist.invalid", 443, timeout=5)
