"""containerd's hosts.toml: the prober goes where the node's pull goes."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import pytest

from pullmedic.app import nodecreds
from pullmedic.core.registryhosts import Endpoint, HostsError, parse_hosts_toml
from pullmedic.probe.hosts import HostsTransport, load_hosts

ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('server = "http://127.0.0.1:5000"\n', [Endpoint("http", "127.0.0.1:5000")]),
        ("", []),
        (
            'server = "https://registry-1.docker.io"\n'
            '[host."http://mirror.local:5000"]\n  capabilities = ["pull", "resolve"]\n',
            [Endpoint("http", "mirror.local:5000"), Endpoint("https", "registry-1.docker.io")],
        ),
        (  # a pull-only mirror is not asked for manifests
            'server = "https://r.example"\n[host."http://blobs:1"]\n  capabilities = ["pull"]\n',
            [Endpoint("https", "r.example")],
        ),
        ('[host."https://m.example/v2"]\n', [Endpoint("https", "m.example")]),
    ],
)
def test_parse_hosts_toml(text: str, expected: list[Endpoint]) -> None:
    assert parse_hosts_toml("r.example", text) == expected


@pytest.mark.parametrize(
    "text",
    ['server = "ftp://x"\n', "server = [\n", "server = 5\n", 'server = "https://x/path"\n'],
)
def test_bad_hosts_toml(text: str) -> None:
    with pytest.raises(HostsError, match=r"hosts.toml for r.example"):
        parse_hosts_toml("r.example", text)


def _write(root: Path, host: str, text: str) -> None:
    (root / host).mkdir(parents=True)
    (root / host / "hosts.toml").write_text(text)


def test_load_hosts_directory(tmp_path: Path) -> None:
    _write(tmp_path, ECR, 'server = "http://127.0.0.1:5000"\n')
    _write(tmp_path, "127.0.0.1:6000", 'server = "http://127.0.0.1:6000"\n')
    _write(tmp_path, "docker.io", '[host."http://mirror:1"]\n')
    (tmp_path / "empty").mkdir()
    assert load_hosts(tmp_path) == {
        ECR: Endpoint("http", "127.0.0.1:5000"),
        "127.0.0.1:6000": Endpoint("http", "127.0.0.1:6000"),
        "docker.io": Endpoint("http", "mirror:1"),
        "registry-1.docker.io": Endpoint("http", "mirror:1"),
    }
    with pytest.raises(HostsError, match="cannot read"):
        load_hosts(tmp_path / "absent")


async def test_transport_rewrites_mapped_hosts_only() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["host"]))
        return httpx.Response(200)

    t = HostsTransport({ECR: Endpoint("http", "127.0.0.1:5000")}, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=t) as c:
        await c.get(f"https://{ECR}/v2/team/app/manifests/1.0?x=1", headers={"Authorization": "x"})
        await c.get("https://quay.io/v2/")
    assert seen == [
        ("http://127.0.0.1:5000/v2/team/app/manifests/1.0?x=1", "127.0.0.1:5000"),
        ("https://quay.io/v2/", "quay.io"),
    ]


async def test_default_directory_applies_to_other_hosts() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    t = HostsTransport({"_default": Endpoint("http", "mirror:1")}, httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=t) as c:
        await c.get("https://any.example/v2/")
    assert seen == ["http://mirror:1/v2/"]


# ---- the flags ----------------------------------------------------------------------------


def _args(**kw: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    nodecreds.add_arguments(p)
    argv: list[str] = []
    for k, v in kw.items():
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", v]
    return p.parse_args(argv)


def test_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "providers.yaml"
    cfg.write_text(
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n"
        "- name: ecr-credential-provider\n  matchImages: ['*.dkr.ecr.*.amazonaws.com']\n"
        "  defaultCacheDuration: 12h\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
    )
    _write(tmp_path / "certs.d", ECR, 'server = "http://127.0.0.1:5000"\n')
    s = nodecreds.settings_from(
        _args(
            credential_provider_config=str(cfg),
            credential_provider_bin_dir=str(tmp_path),
            registry_config_dir=str(tmp_path / "certs.d"),
        )
    )
    assert [p.name for p in s.providers] == ["ecr-credential-provider"]
    assert s.hosts == {ECR: Endpoint("http", "127.0.0.1:5000")}
    assert nodecreds.settings_from(_args()) == nodecreds.NodeSettings()


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"credential_provider_config": "x.yaml"}, "go together"),
        ({"credential_provider_bin_dir": "/"}, "go together"),
        (
            {"credential_provider_config": "/absent.yaml", "credential_provider_bin_dir": "/"},
            "--credential-provider-config: cannot read",
        ),
        ({"registry_config_dir": "/absent-dir"}, "--registry-config-dir"),
    ],
)
def test_flag_errors(kw: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        nodecreds.settings_from(_args(**kw))


@pytest.mark.parametrize(
    "argv",
    [
        ["diagnose", "r.example/a:1"],
        ["explain", "pod/x"],
        ["audit"],
        ["run"],
    ],
)
def test_every_entry_point_takes_the_node_flags(argv: list[str]) -> None:
    from pullmedic.app.cli import build_parser

    args = build_parser().parse_args(
        [
            *argv,
            "--credential-provider-config",
            "c.yaml",
            "--credential-provider-bin-dir",
            "/plugins",
            "--registry-config-dir",
            "/certs.d",
        ]
    )
    assert args.credential_provider_config == "c.yaml"
    assert args.credential_provider_bin_dir == "/plugins"
    assert args.registry_config_dir == "/certs.d"


def test_run_reads_the_node_flags_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pullmedic.app.cli import build_parser

    monkeypatch.setenv("PULLMEDIC_REGISTRY_CONFIG_DIR", str(tmp_path))
    assert build_parser().parse_args(["run"]).registry_config_dir == str(tmp_path)
