"""A server that runs its own asyncio loop in a daemon thread, so sync and async tests can
both drive it (the fault proxies in front of registries and of the API server)."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class LoopServer:
    """Subclasses set ``url`` and ``_stopping`` from ``_serve(ready)`` and set ``ready``
    once listening; ``start()`` returns ``url``, ``stop()`` ends the loop."""

    thread_name = "sandbox-loop-server"

    def __init__(self) -> None:
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    async def _serve(self, ready: threading.Event) -> None:
        raise NotImplementedError

    def start(self) -> str:
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # surfaced to start()
                error.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            raise error[0]
        if not self.url:
            raise RuntimeError(f"{self.thread_name} did not start")
        return self.url

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
