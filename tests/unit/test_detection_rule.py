"""Which waiting containers are stuck getting their image: the rule, not a list of texts.

The kubelet writes Go error strings into the waiting reason when it fails before any pull
(a pull secret it cannot decode); every such reason on a container whose image never
arrived must count, and none of the kubelet's own non-pull states may.
"""

from __future__ import annotations

from typing import Any

import pytest

from pullmedic.core.detection import (
    NOT_PULL_REASONS,
    PULL_REASONS,
    might_be_stuck,
    stuck_containers,
    stuck_pulling,
)

IMAGE_ID = "docker.io/library/nginx@sha256:" + "a" * 64

# (waiting reason, status imageID, stuck?)
RULE = [
    # The kubelet's pull reasons: stuck, image on the node or not (a restart after GC).
    *[(r, "", True) for r in sorted(PULL_REASONS)],
    *[(r, IMAGE_ID, True) for r in sorted(PULL_REASONS)],
    # Its non-pull states: never, with or without an image.
    *[(r, "", False) for r in sorted(NOT_PULL_REASONS)],
    *[(r, IMAGE_ID, False) for r in sorted(NOT_PULL_REASONS)],
    # Errors the kubelet puts in the reason verbatim before pulling: stuck while the
    # image never arrived, whatever the text says.
    ("illegal base64 data at input byte 0", "", True),
    ("illegal base64 data at input byte 12", None, True),
    ("unable to parse auth field, must be formatted as base64(username:password)", "", True),
    ("invalid character 'x' looking for beginning of value", "", True),
    ("json: cannot unmarshal string into Go value of type DockerConfig", "", True),
    # ... but not once the image was there: that error is not about getting it.
    ("illegal base64 data at input byte 0", IMAGE_ID, False),
    ("SomeFutureReason", IMAGE_ID, False),
    # No reason at all is no failure.
    ("", "", False),
    (None, "", False),
]


@pytest.mark.parametrize(("reason", "image_id", "stuck"), RULE)
def test_rule(reason: str | None, image_id: str | None, stuck: bool) -> None:
    assert stuck_pulling(reason, image_id) is stuck


def pod(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"uid": "u1"},
        "spec": {
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [{"name": "app", "image": "r.io/app:1"}],
            "ephemeralContainers": [{"name": "dbg", "image": "r.io/debug:1"}],
        },
        "status": status,
    }


def waiting(name: str, reason: str, image_id: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "image": "ignored",
        "imageID": image_id,
        "state": {"waiting": {"reason": reason, "message": reason}},
    }


BAD_AUTH = "illegal base64 data at input byte 0"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"containerStatuses": [waiting("app", BAD_AUTH)]}, [("containers", "app", BAD_AUTH)]),
        (
            {"initContainerStatuses": [waiting("init", BAD_AUTH)]},
            [("initContainers", "init", BAD_AUTH)],
        ),
        (
            {"ephemeralContainerStatuses": [waiting("dbg", BAD_AUTH)]},
            [("ephemeralContainers", "dbg", BAD_AUTH)],
        ),
        ({"containerStatuses": [waiting("app", BAD_AUTH, IMAGE_ID)]}, []),
        ({"containerStatuses": [waiting("app", "CrashLoopBackOff", IMAGE_ID)]}, []),
        ({"containerStatuses": [waiting("app", "CreateContainerConfigError")]}, []),
    ],
)
def test_pods(status: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    p = pod(status)
    got = [(s.kind, s.name, s.reason) for s in stuck_containers(p)]
    assert got == expected
    # The cheap pre-filter every pod event passes agrees with the full read.
    assert might_be_stuck(p, ()) is bool(expected)
