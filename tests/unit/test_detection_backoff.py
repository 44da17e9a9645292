"""Detection of stuck containers and the kubelet back-off arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from pullmedic.core import backoff
from pullmedic.core.detection import stuck_containers


def pod(**status: Any) -> dict[str, Any]:
    return {
        "spec": {
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "redis:7"}],
            "ephemeralContainers": [{"name": "dbg", "image": "debug:x"}],
        },
        "status": status,
    }


def waiting(name: str, reason: str, image: str = "ignored") -> dict[str, Any]:
    return {"name": name, "image": image, "state": {"waiting": {"reason": reason, "message": "m"}}}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, []),
        ({"containerStatuses": [waiting("a", "ContainerCreating")]}, []),
        ({"containerStatuses": [waiting("b", "ErrImagePull")]}, [("containers", 1, "redis:7")]),
        ({"containerStatuses": [waiting("a", "ImagePullBackOff")]}, [("containers", 0, "nginx:1")]),
        # the real kubelet's reason for a pull secret whose auth is not base64(user:pass)
        (
            {
                "containerStatuses": [
                    waiting(
                        "a",
                        "unable to parse auth field, must be formatted as "
                        "base64(username:password)",
                    )
                ]
            },
            [("containers", 0, "nginx:1")],
        ),
        (
            {
                "initContainerStatuses": [waiting("init", "InvalidImageName")],
                "containerStatuses": [waiting("a", "PodInitializing")],
            },
            [("initContainers", 0, "busybox:1")],
        ),
        (
            {"ephemeralContainerStatuses": [waiting("dbg", "ErrImageNeverPull")]},
            [("ephemeralContainers", 0, "debug:x")],
        ),
        ({"containerStatuses": [{"name": "a", "state": {"running": {}}}]}, []),
    ],
)
def test_stuck_containers(status: dict[str, Any], expected: list[tuple[str, int, str]]) -> None:
    got = [(s.kind, s.index, s.image) for s in stuck_containers(pod(**status))]
    assert got == expected


def test_schedule_is_kubelet_backoff() -> None:
    assert backoff.schedule(1000) == [0, 10, 30, 70, 150, 310, 610, 910]


@pytest.mark.parametrize(
    ("elapsed", "attempts", "step", "next_in"),
    [
        (0, 1, 10, 10),
        (5, 1, 10, 5),
        (10, 2, 20, 20),
        (29, 2, 20, 1),
        (150, 5, 160, 160),
        (310, 6, 300, 300),
        (909, 7, 300, 1),
        (3000, 14, 300, 10),  # linear once capped: one attempt per 300 s
    ],
)
def test_state(elapsed: float, attempts: int, step: float, next_in: float) -> None:
    s = backoff.state(elapsed)
    assert (s.attempts, s.current_step, s.next_attempt_in) == (attempts, step, next_in)
    assert backoff.saved_by_recreation(elapsed) == next_in
