"""The webhook's own CA and serving certificate (--webhook-tls=self): when to renew, what
the API server trusts meanwhile, and two replicas sharing one Secret."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from pullmedic.admission import certs
from pullmedic.admission.tls import CONFIGURATION_KIND, SelfManagedTLS, TLSSettings
from pullmedic.kube.client import KubeError
from tests.unit.fakekube import FakeKube

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
NAMES = certs.dns_names("pullmedic-webhook", "pullmedic-system")
CA_LIFE = 3650 * DAY
SERVING_LIFE = 90 * DAY


def renew(stored: dict[str, bytes] | None, now: dt.datetime, **kw: object) -> certs.Renewal:
    args: dict[str, object] = {"ca_validity": CA_LIFE, "serving_validity": SERVING_LIFE}
    args.update(kw)
    return certs.renew(stored, now, NAMES, **args)  # type: ignore[arg-type]


FIRST = renew(None, T0)


def edited(**changes: bytes) -> dict[str, bytes]:
    data = FIRST.bundle.as_secret_data()
    data.update(changes)
    return data


OTHER = renew(None, T0)  # another CA and serving pair


@pytest.mark.parametrize(
    ("name", "stored", "now", "reason", "same_ca"),
    [
        ("nothing stored", None, T0, "no usable CA", False),
        ("fresh", FIRST.bundle.as_secret_data(), T0 + DAY, "", True),
        ("serving just before its renewal", FIRST.bundle.as_secret_data(), T0 + 59 * DAY, "", True),
        (
            "serving due (a third of its life left)",
            FIRST.bundle.as_secret_data(),
            T0 + 61 * DAY,
            "serving certificate expires",
            True,
        ),
        ("CA due", FIRST.bundle.as_secret_data(), T0 + 2500 * DAY, "the CA expires", False),
        (
            "CA key not the CA's",
            edited(**{"ca.key": OTHER.bundle.ca.key}),
            T0,
            "no usable CA",
            False,
        ),
        ("garbage CA", edited(**{"ca.crt": b"not pem"}), T0, "no usable CA", False),
        (
            "serving key not its own",
            edited(**{"tls.key": OTHER.bundle.serving.key}),
            T0,
            "no serving certificate",
            True,
        ),
        (
            "serving from another CA",
            edited(**{"tls.crt": OTHER.bundle.serving.cert, "tls.key": OTHER.bundle.serving.key}),
            T0,
            "no serving certificate",
            True,
        ),
        ("serving missing", edited(**{"tls.crt": b""}), T0, "no serving certificate", True),
    ],
)
def test_when_to_renew(
    name: str, stored: dict[str, bytes] | None, now: dt.datetime, reason: str, same_ca: bool
) -> None:
    r = renew(stored, now)
    if reason:
        assert reason in r.reason, name
    else:
        assert not r.changed, (name, r.reason)
        assert r.bundle.as_secret_data() == stored
    assert (r.bundle.ca.cert == FIRST.bundle.ca.cert) is same_ca, name
    assert certs.matches(r.bundle.serving, r.bundle.ca, NAMES)
    assert not certs.due(r.bundle.serving, now)


def test_service_renamed_reissues_for_the_new_names() -> None:
    r = certs.renew(
        FIRST.bundle.as_secret_data(),
        T0,
        certs.dns_names("hook", "other"),
        ca_validity=CA_LIFE,
        serving_validity=SERVING_LIFE,
    )
    assert "no serving certificate" in r.reason
    assert r.bundle.ca == FIRST.bundle.ca


def test_address_sans_are_required_when_asked() -> None:
    r = renew(FIRST.bundle.as_secret_data(), T0, addresses=("127.0.0.1",))
    assert "no serving certificate" in r.reason
    san = certs.load(r.bundle.serving.cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    again = renew(r.bundle.as_secret_data(), T0, addresses=("127.0.0.1",))
    assert not again.changed


def test_a_new_ca_keeps_the_old_one_trusted_until_it_expires() -> None:
    rotated = renew(FIRST.bundle.as_secret_data(), T0 + 2500 * DAY)
    pems = certs.split_pem(rotated.bundle.trusted)
    assert pems[0].strip() == rotated.bundle.ca.cert.strip()
    assert [p.strip() for p in pems[1:]] == [FIRST.bundle.ca.cert.strip()]
    # Once the old CA has expired it leaves the bundle, and that alone is a change.
    later = renew(rotated.bundle.as_secret_data(), T0 + 3651 * DAY)
    assert later.bundle.ca == rotated.bundle.ca or "CA" in later.reason
    assert len(certs.split_pem(later.bundle.trusted)) == 1


def test_serving_never_outlives_its_ca() -> None:
    short = renew(None, T0, ca_validity=10 * DAY)
    assert short.bundle.serving.not_after() <= short.bundle.ca.not_after()


# ---- the loop, through the fake API ------------------------------------------------------


def hook_configuration(kube: FakeKube, hooks: int = 2) -> None:
    kube.put(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": CONFIGURATION_KIND,
            "metadata": {"name": "pullmedic"},
            "webhooks": [
                {"name": f"h{i}.pullmedic.dev", "clientConfig": {"url": "https://127.0.0.1/admit"}}
                for i in range(hooks)
            ],
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def replica(kube: FakeKube, tmp: Path, clock: Clock, name: str = "a") -> SelfManagedTLS:
    s = TLSSettings(
        namespace="pullmedic-system",
        directory=str(tmp / name),
        serving_validity=SERVING_LIFE.total_seconds(),
        propagation=0.0,
    )
    return SelfManagedTLS(kube, s, clock=clock)


def ca_bundles(kube: FakeKube) -> list[bytes]:
    conf = kube.obj(CONFIGURATION_KIND, "", "pullmedic")
    return [base64.b64decode(h["clientConfig"]["caBundle"]) for h in conf["webhooks"]]


def secret_data(kube: FakeKube) -> dict[str, bytes]:
    s = kube.obj("Secret", "pullmedic-system", "pullmedic-webhook-tls")
    return {k: base64.b64decode(v) for k, v in s["data"].items()}


async def test_first_start_creates_the_secret_bundle_and_files(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    hook_configuration(kube)
    tls = replica(kube, tmp_path, clock)
    assert await tls.ensure() is True
    data = secret_data(kube)
    assert ca_bundles(kube) == [data["ca.crt"], data["ca.crt"]]
    assert Path(tls.cert_file).read_bytes() == data["tls.crt"]
    assert Path(tls.key_file).stat().st_mode & 0o777 == 0o600
    # The files are a pair a TLS server can load, for the Service's names.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    writes = len(kube.writes)
    assert await tls.ensure() is False  # nothing due: no write at all
    assert len(kube.writes) == writes


async def test_serving_rotation_keeps_the_ca_bundle(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    hook_configuration(kube)
    tls = replica(kube, tmp_path, clock)
    await tls.ensure()
    before = secret_data(kube)
    clock.now = T0 + 61 * DAY
    assert await tls.ensure() is True
    after = secret_data(kube)
    assert after["tls.crt"] != before["tls.crt"] and after["ca.crt"] == before["ca.crt"]
    assert [w.kind for w in kube.writes].count(CONFIGURATION_KIND) == 1  # only the first
    assert Path(tls.cert_file).read_bytes() == after["tls.crt"]


async def test_ca_rotation_publishes_both_cas_before_serving_the_new_one(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    hook_configuration(kube)
    tls = replica(kube, tmp_path, clock)
    await tls.ensure()
    old_ca = secret_data(kube)["ca.key"]
    clock.now = T0 + 2500 * DAY
    await tls.ensure()
    data = secret_data(kube)
    assert data["ca.key"] != old_ca
    assert all(len(certs.split_pem(b)) == 2 for b in ca_bundles(kube))
    # The bundle was patched before the files changed (the write order of the edge).
    kinds = [w.kind for w in kube.writes]
    assert kinds[-2:] == ["Secret", CONFIGURATION_KIND]


async def test_two_replicas_share_one_secret(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    hook_configuration(kube)
    a, b = replica(kube, tmp_path, clock, "a"), replica(kube, tmp_path, clock, "b")
    await a.ensure()
    await b.ensure()
    assert Path(a.cert_file).read_bytes() == Path(b.cert_file).read_bytes()
    assert [w.verb for w in kube.writes if w.kind == "Secret"] == ["create"]


async def test_a_lost_race_reads_the_winners_certificate(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    hook_configuration(kube)
    a, b = replica(kube, tmp_path, clock, "a"), replica(kube, tmp_path, clock, "b")
    await a.ensure()
    clock.now = T0 + 61 * DAY
    kube.fail("patch", "Secret", KubeError(422, "the resourceVersion changed"), times=1)
    await b.ensure()  # its write fails once; it reads again and renews then
    await a.ensure()
    assert Path(a.cert_file).read_bytes() == Path(b.cert_file).read_bytes()
    assert Path(a.cert_file).read_bytes() == secret_data(kube)["tls.crt"]


async def test_api_errors_surface_to_the_supervisor(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    hook_configuration(kube)
    kube.fail("get", "Secret", KubeError(503, "unavailable"))
    tls = replica(kube, tmp_path, clock)
    with pytest.raises(KubeError):
        await tls.ensure()
    assert not Path(tls.cert_file).exists()


async def test_a_missing_configuration_still_serves(tmp_path: Path) -> None:
    kube, clock = FakeKube(), Clock()
    tls = replica(kube, tmp_path, clock)
    assert await tls.ensure() is True
    assert Path(tls.cert_file).exists()


def test_check_interval_fits_short_certificates() -> None:
    assert TLSSettings(namespace="x", serving_validity=30).check_interval() == 3.0
    assert TLSSettings(namespace="x").check_interval() == 60.0


def test_a_short_lived_certificate_is_not_due_at_once() -> None:
    r = renew(None, T0, serving_validity=dt.timedelta(seconds=24))
    assert not certs.due(r.bundle.serving, T0 + dt.timedelta(seconds=10))
    assert certs.due(r.bundle.serving, T0 + dt.timedelta(seconds=17))
