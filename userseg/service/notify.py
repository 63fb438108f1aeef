"""The systemd notification protocol (sd_notify), without libsystemd.

Why our own 30 lines: the protocol is one datagram per message to the AF_UNIX
socket named by $NOTIFY_SOCKET (a leading "@" means the abstract namespace),
and a C binding would be one more package on an appliance for that.  Without
$NOTIFY_SOCKET (run by hand, in tests) every call is a no-op.  Errors are
logged once and never raised, and a send never blocks: a notification must
not take the service down or stall it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("userseg.notify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._warned = False
        self.sent: list[str] = []  # what was sent (status, tests); bounded below

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send `READY=1`, `STATUS=...` etc. as one datagram; True if it was sent."""
        message = "\n".join(fields)
        self.sent = [*self.sent[-20:], message]
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block: a manager that does not read (a full receive queue) must not
            # stall the loop that sends WATCHDOG=1 - a dropped ping is the honest outcome.
            self._sock.sendto(message.encode(), socket.MSG_DONTWAIT, target)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None if not asked for.

    $WATCHDOG_PID, when set, names the process the watchdog is meant for; a child
    that inherited the environment must not ping on its parent's behalf.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
