"""The operator's flags and their environment defaults (flags.add_arguments)."""

from __future__ import annotations

import argparse

import pytest

from pullmedic.app import flags, runner


def parse(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *argv: str) -> argparse.Namespace:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = argparse.ArgumentParser()
    flags.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize(
    ("env", "argv", "attr", "want"),
    [
        ({}, (), "metrics_port", 9090),
        ({"PULLMEDIC_METRICS_PORT": "9191"}, (), "metrics_port", 9191),
        ({"PULLMEDIC_METRICS_PORT": "9191"}, ("--metrics-port", "9292"), "metrics_port", 9292),
        ({"PULLMEDIC_API_TIMEOUT": "7.5"}, (), "api_timeout", 7.5),
        ({}, (), "audit_checks_per_host", 25),
        ({}, (), "quota_reserve", 0.2),
        ({"PULLMEDIC_QUOTA_RESERVE": "0.5"}, (), "quota_reserve", 0.5),
        ({"PULLMEDIC_QUOTA_RESERVE": "0.5"}, ("--quota-reserve", "0"), "quota_reserve", 0.0),
        # A bad variable does not matter when the flag is given.
        (
            {"PULLMEDIC_LIVENESS_PORT": "tcp://10.0.0.9:8080"},
            ("--liveness-port=1",),
            "liveness_port",
            1,
        ),
    ],
)
def test_numeric_flags_take_their_variables(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    argv: tuple[str, ...],
    attr: str,
    want: float,
) -> None:
    args = parse(monkeypatch, env, *argv)
    assert getattr(args, attr) == want


def test_a_service_link_variable_is_a_usage_error_that_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(monkeypatch, {"PULLMEDIC_METRICS_PORT": "tcp://10.0.0.23:9090"})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--metrics-port" in err and "enableServiceLinks: false" in err


def test_webhook_tls_self_needs_the_operator_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(monkeypatch, {}, "--webhook-port=9443", "--webhook-tls=self")
    with pytest.raises(ValueError, match="operator-namespace"):
        runner.settings_from(args)


def test_webhook_tls_self_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(
        monkeypatch,
        {"PULLMEDIC_WEBHOOK_TLS": "self"},
        "--webhook-port=9443",
        "--operator-namespace=ops",
        "--webhook-cert-validity=120",
        "--webhook-address=127.0.0.1",
    )
    tls = runner.settings_from(args).webhook.tls
    assert tls is not None and tls.namespace == "ops" and tls.secret == "pullmedic-webhook-tls"
    assert tls.addresses == ("127.0.0.1",) and tls.check_interval() == 12.0
    files = parse(monkeypatch, {"PULLMEDIC_WEBHOOK_TLS": "files"}, "--webhook-port=9443")
    assert runner.settings_from(files).webhook.tls is None


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "fifth"])
def test_the_quota_reserve_is_a_fraction(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit):
        parse(monkeypatch, {}, "--quota-reserve", value)
    assert "--quota-reserve" in capsys.readouterr().err


def test_the_quota_reserve_reaches_the_registry_client(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(monkeypatch, {}, "--quota-reserve", "0.35")
    assert runner.settings_from(args).probe.quota_reserve == 0.35
