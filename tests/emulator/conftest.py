"""The emulator's own tests run on a sandbox of their own with the emulated node.

The session's main sandbox has the real kubelet; these tests check the emulator (which the
benchmarks use) at a 50x time scale, so they override every fixture that reaches a node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TIME_SCALE


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sandbox import env

    sb = env.start(tmp_path_factory.mktemp("emulated"), time_scale=TIME_SCALE, node="emulator")
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="session")
def cluster(sandbox: Any) -> Any:
    return sandbox.cluster


@pytest.fixture(scope="session")
def registries(sandbox: Any) -> Any:
    return sandbox.registries


@pytest.fixture(scope="session")
def emulator(sandbox: Any) -> Any:
    assert sandbox.emulator is not None
    return sandbox.emulator


@pytest.fixture(scope="session")
def api_client(cluster: Any) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def apps(api_client: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client)
