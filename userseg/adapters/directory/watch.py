"""AD change notification: a never-ending search that the DC answers with changed entries.

The request is a subtree search with the LDAP_SERVER_NOTIFICATION control
(1.2.840.113556.1.4.528, critical) and the filter exactly ``(objectClass=*)``
(AD refuses any other).  The show-deleted control is added because without it
Samba does not notify deletions (measured: a deleted user is announced as
``CN=x\\0ADEL:<guid>,CN=Deleted Objects,...`` only with it).

Why a hand-written receive loop instead of ldap3's ASYNC_STREAM strategy:
ldap3's receiver thread blocks in ``recv`` with no way to interrupt it, and
with a receive timeout set it ``continue``s on *every* OSError, spinning
forever on a dead socket.  Here the connection is made and bound exactly like
the reader's (same TLS, failover and error messages), the search request is
sent with ``Connection.send``, and this module reads the socket itself with a
short timeout: ``stop`` ends the watch within one timeout, EOF or a reset ends
the session, and TCP keepalive finds a silently vanished DC.

Latency (measured, Samba 4.17): a change made through the same LDAP server
process is notified at once; one made elsewhere (another prefork worker,
samba-tool on the database file) waits for Samba's 5 s notification
re-check.  Notifications are therefore a *trigger*: the caller then runs an
incremental read, and still runs timed ones as the safety net.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable

from ldap3 import DEREF_NEVER, SUBTREE
from ldap3.operation.search import search_operation
from ldap3.strategy.base import BaseStrategy
from ldap3.utils.asn1 import decode_message_fast

from userseg.adapters.directory.connect import Bound, Connector
from userseg.adapters.directory.reader import SHOW_DELETED_OID, Scope, norm_dn, under
from userseg.directory.model import DirectoryError

log = logging.getLogger("userseg.directory")

NOTIFICATION_OID = "1.2.840.113556.1.4.528"
POLL_SECONDS = 0.25  # recv timeout: how soon `stop` is noticed
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 10.0  # a session that lasted this long resets the backoff


class StopSignal:
    """Set when any of its events is set (the caller's `stop`, or the directory being closed)."""

    def __init__(self, *events: threading.Event) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._events[0].wait(min(left, POLL_SECONDS))
        return True


class WatchEnded(Exception):
    """The notification session is over (socket closed, search ended by the server)."""


def notification_bases(scope: Scope) -> tuple[str, ...]:
    """Bases to watch: every user and group base, minus those inside another (subtree covers them).

    AD allows only a few notification searches per connection (5 on Windows), so
    nested bases are not watched twice.
    """
    kept: list[str] = []
    for base in sorted(scope.user_bases + scope.group_bases, key=lambda dn: (len(norm_dn(dn)), norm_dn(dn))):
        if not under(base, kept):
            kept.append(base)
    return tuple(kept)


def _enable_keepalive(sock: socket.socket) -> None:
    """Detect a DC that vanished without closing the connection (power loss, partition) in ~1 min."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except (OSError, AttributeError):
        log.debug("TCP keepalive options unavailable", exc_info=True)


class Session:
    """One bound connection with notification searches outstanding on it."""

    def __init__(self, bound: Bound, bases: tuple[str, ...]) -> None:
        self.bound = bound
        self.message_ids: set[int] = set()
        conn = bound.conn
        controls = [(NOTIFICATION_OID, True, None), (SHOW_DELETED_OID, False, None)]
        for base in bases:
            request = search_operation(
                base,
                "(objectClass=*)",
                SUBTREE,
                DEREF_NEVER,
                ["1.1"],  # no attributes: the DN is all the trigger needs
                0,
                0,
                False,
                False,
                conn.auto_encode,
                None,
                validator=None,
                check_names=conn.check_names,
            )
            self.message_ids.add(conn.send("searchRequest", request, controls))
        self.sock: socket.socket = conn.socket
        _enable_keepalive(self.sock)
        self.sock.settimeout(POLL_SECONDS)
        self._buffer = b""

    def poll(self) -> list[str]:
        """DNs notified since the last call; [] after a quiet POLL_SECONDS. Raises WatchEnded."""
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            return []
        except OSError as exc:
            raise WatchEnded(f"connection lost: {exc}") from None
        if not data:
            raise WatchEnded("the server closed the connection")
        self._buffer += data
        dns: list[str] = []
        while True:
            size = BaseStrategy.compute_ldap_message_size(self._buffer)
            if size == -1 or len(self._buffer) < size:
                return dns
            message, self._buffer = self._buffer[:size], self._buffer[size:]
            dn = self._handle(message)
            if dn is not None:
                dns.append(dn)

    def _handle(self, message: bytes) -> str | None:
        decoded = decode_message_fast(message)
        msg_id = int(decoded["messageID"])
        response = self.bound.conn.strategy.decode_response_fast(decoded)
        kind = response.get("type")
        if msg_id == 0:  # unsolicited: only "notice of disconnection" exists
            notice = f"{response.get('description')} {response.get('message') or ''}".strip()
            raise WatchEnded(f"server notice: {notice}")
        if msg_id not in self.message_ids:
            return None
        if kind == "searchResEntry":
            return str(response.get("dn", ""))
        if kind == "searchResDone":
            why = f"{response.get('description')}: {response.get('message') or ''}".rstrip(": ")
            raise WatchEnded(f"notification search ended by the server ({why})")
        return None  # searchResRef and the like: nothing to report


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


def watch(
    connector: Connector,
    settings_scope: Callable[[Bound], Scope],
    on_change: Callable[[str], None],
    stop: StopSignal,
) -> None:
    """Run notification sessions until `stop` is set (see DirectorySource.watch)."""
    delay = BACKOFF_FIRST
    while not stop.is_set():
        started = time.monotonic()
        reason = _one_session(connector, settings_scope, on_change, stop)
        if stop.is_set():
            return
        if time.monotonic() - started >= HEALTHY_AFTER:
            delay = BACKOFF_FIRST
        wait = _jitter(delay)
        log.warning("directory watch: %s; reconnecting in %.1f s", reason, wait)
        stop.wait(wait)
        delay = min(delay * 2, BACKOFF_MAX)


def _one_session(
    connector: Connector,
    settings_scope: Callable[[Bound], Scope],
    on_change: Callable[[str], None],
    stop: StopSignal,
) -> str:
    """One connect + notify loop; returns why it ended (ignored when `stop` is set)."""
    try:
        bound = connector.connect()
    except DirectoryError as exc:
        return f"cannot connect ({exc})"
    try:
        try:
            session = Session(bound, notification_bases(settings_scope(bound)))
        except Exception as exc:  # ldap3 or socket errors while sending the requests
            return f"{bound.url}: cannot start the notification search ({exc})"
        log.info("directory watch: notifications from %s", bound.url)
        _deliver(on_change, "")
        while not stop.is_set():
            try:
                dns = session.poll()
            except WatchEnded as exc:
                return f"{bound.url}: {exc}"
            except Exception as exc:  # an undecodable message: start over rather than die
                log.debug("directory watch: poll failed", exc_info=True)
                return f"{bound.url}: unreadable response ({type(exc).__name__}: {exc})"
            for dn in dns:
                _deliver(on_change, dn)
        return "stopped"
    finally:
        bound.close()


def _deliver(on_change: Callable[[str], None], dn: str) -> None:
    """A failing callback is the caller's bug; it must not end the watch (which would hide changes)."""
    try:
        on_change(dn)
    except Exception:
        log.exception("directory watch: on_change(%r) failed", dn)
