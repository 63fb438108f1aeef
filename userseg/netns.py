"""Run work inside a named network namespace from a dedicated thread.

Linux's setns(CLONE_NEWNET) moves only the calling thread, and a netlink or
inet socket belongs to the namespace of the thread that created it.  So the
firewall adapter (and the lab's traffic probes) keep one worker thread per
namespace and create their libnftables/pyroute2/socket handles on it; the
rest of the process stays where it was.  With `name=None` the worker simply
runs in the current namespace, so production code takes the same path.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread into the named namespace (as `ip netns exec` would)."""
    path = os.path.join(NETNS_RUN_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name!r} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsWorker:
    """A single thread living in one network namespace that runs submitted calls in order."""

    def __init__(self, name: str | None, thread_name: str = "netns-worker") -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], Future[object]] | None] = (
            queue.SimpleQueue()
        )
        started: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name=thread_name, daemon=True)
        self._thread.start()
        started.result()  # re-raises a failed setns here, in the caller

    def _run(self, started: Future[None]) -> None:
        try:
            if self.name is not None:
                enter_netns(self.name)
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the namespace thread and return its result (exceptions propagate)."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[object] = Future()
        self._calls.put((fn, fut))
        return fut.result()  # type: ignore[return-value]

    def close(self) -> None:
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join(timeout=5)
