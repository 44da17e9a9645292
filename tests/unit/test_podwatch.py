"""The lean pod watch against a scripted source: list in pages, watch from the list's
resourceVersion, bookmarks as heartbeats, 410 means list again, and a re-list reports the
remembered pods that vanished while nobody was watching."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest

from pullmedic.kube.podwatch import Busy, Gone, PodWatch, PodWatchSettings, check_answer


def pod(uid: str, rv: str = "1", reason: str | None = None) -> dict[str, Any]:
    status = (
        {"containerStatuses": [{"name": "a", "state": {"waiting": {"reason": reason}}}]}
        if reason
        else {}
    )
    return {"metadata": {"uid": uid, "resourceVersion": rv}, "status": status}


class Script:
    """Pages to list and streams to watch, in order; records what was asked."""

    def __init__(self, pages: list[list[dict[str, Any]]], streams: list[list[Any]]) -> None:
        self.pages = pages
        self.streams = streams
        self.asked: list[dict[str, str]] = []

    async def list_page(self, params: Mapping[str, str]) -> dict[str, Any]:
        self.asked.append(dict(params))
        items = self.pages.pop(0)
        more = len(self.pages) > 0
        return {
            "items": items,
            "metadata": {"resourceVersion": "100", **({"continue": "next"} if more else {})},
        }

    async def stream(self, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        self.asked.append(dict(params))
        for ev in self.streams.pop(0):
            if isinstance(ev, Exception):
                raise ev
            yield ev


def watcher(script: Script, known: set[str]) -> tuple[PodWatch, list[tuple[Any, str]], list[int]]:
    seen: list[tuple[Any, str]] = []
    beats = [0]

    def on_event(t: str | None, body: Mapping[str, Any]) -> None:
        seen.append((t, body["metadata"]["uid"]))

    def beat() -> None:
        beats[0] += 1

    return PodWatch(script, on_event, lambda: known, on_heartbeat=beat), seen, beats


async def test_list_in_pages_then_watch_from_its_resource_version() -> None:
    script = Script([[pod("a"), pod("b")], [pod("c")]], [])
    w, seen, _ = watcher(script, set())
    await w.relist()
    assert [u for _, u in seen] == ["a", "b", "c"]
    assert script.asked[0]["limit"] == str(PodWatchSettings().page)
    assert script.asked[1]["continue"] == "next"
    assert w.rv == "100" and w.listed


async def test_a_relist_reports_remembered_pods_that_vanished() -> None:
    script = Script([[pod("a")]], [])
    w, seen, _ = watcher(script, {"a", "gone"})
    await w.relist()
    assert ("DELETED", "gone") in seen and ("DELETED", "a") not in seen


async def test_events_bookmarks_and_the_normal_end_are_heartbeats() -> None:
    script = Script(
        [],
        [
            [
                {"type": "ADDED", "object": pod("x", "101", "ErrImagePull")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}},
                {"type": "DELETED", "object": pod("x", "151")},
            ]
        ],
    )
    w, seen, beats = watcher(script, set())
    w.rv = "100"
    await w.watch_once()
    assert seen == [("ADDED", "x"), ("DELETED", "x")]  # bookmarks never reach the engine
    assert w.rv == "151" and beats[0] == 4
    params = script.asked[0]
    assert params["resourceVersion"] == "100" and params["allowWatchBookmarks"] == "true"
    assert params["timeoutSeconds"] == str(PodWatchSettings().server_timeout)


async def test_410_in_the_stream_means_list_again() -> None:
    script = Script([[pod("a")]], [[{"type": "ERROR", "object": {"code": 410}}]])
    w, _, _ = watcher(script, set())
    w.rv = "5"
    with pytest.raises(Gone):
        await w.watch_once()
    await w.relist()
    assert w.lists == 1 and w.rv == "100"


async def test_a_transport_failure_propagates_to_the_supervisor() -> None:
    script = Script([], [[{"type": "ADDED", "object": pod("x")}, ConnectionResetError()]])
    w, seen, _ = watcher(script, set())
    with pytest.raises(ConnectionResetError):
        await w.watch_once()
    assert seen == [("ADDED", "x")]


def test_shard_selector_is_sent_on_lists_and_watches() -> None:
    w = PodWatch(
        Script([], []),
        lambda *_: None,
        set,
        settings=PodWatchSettings(shard_selector="shardRange(object.metadata.uid, '0x0', '0x8')"),
    )
    assert w._params(watch="true")["shardSelector"].startswith("shardRange(")


def _answer(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(
        status, headers=headers, request=httpx.Request("GET", "https://api/api/v1/pods")
    )


@pytest.mark.parametrize(
    ("status", "retry_after", "raised", "wait"),
    [
        (200, None, None, None),
        (410, None, Gone, None),
        (429, "3", Busy, 3.0),
        (429, None, Busy, 1.0),  # the API server always sends it; 1 s if it did not
        (429, "Wed, 21 Oct 2026 07:28:00 GMT", Busy, 1.0),
        (429, "nan", Busy, 1.0),
        (429, "-5", Busy, 0.0),
        (429, "86400", Busy, 60.0),  # never longer than the supervisor's longest back-off
        (500, None, httpx.HTTPStatusError, None),
        (403, None, httpx.HTTPStatusError, None),
    ],
    ids=[
        "ok",
        "gone",
        "busy-3s",
        "busy-no-header",
        "busy-http-date",
        "busy-nan",
        "busy-negative",
        "busy-a-day",
        "server-error",
        "forbidden",
    ],
)
def test_an_answer_that_is_not_a_list_or_stream_is_refused_by_kind(
    status: int, retry_after: str | None, raised: type[Exception] | None, wait: float | None
) -> None:
    if raised is None:
        check_answer(_answer(status, retry_after))
        return
    with pytest.raises(raised) as info:
        check_answer(_answer(status, retry_after))
    if wait is not None:
        assert isinstance(info.value, Busy) and info.value.retry_after == wait
