"""LdapDirectory: the DirectorySource the sync service uses, over ldap3 against Active Directory.

It keeps one bound connection for reads (a TLS handshake and bind cost
~90 ms, too much to pay for every notification-triggered incremental read)
and reconnects it when it turns out dead.  A read that failed on a *reused*
connection because the socket had died (the DC restarted since the last
read) is retried once on a fresh connection, with failover; any other
failure is reported.  ``watch()`` makes its own connections, so a long
notification session never blocks reads.

Reads are serialised by a lock: an ldap3 SYNC connection carries one
operation at a time, and read_user() is called from the login ingester's
thread while the sync service reads from its own.

A full read (fullread.py) additionally opens up to ``read_connections - 1``
short-lived connections to the same DC and reads partitions of the users and
the groups over all of them at once; they are closed when the read ends.
They are not kept: full reads are hours apart, longer than AD keeps an idle
connection (MaxConnIdleTime, 900 s), and each costs only ~90 ms to open,
while the first partition is already being read on the read connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import TypeVar

from userseg.adapters.directory import changes
from userseg.adapters.directory import watch as watch_mod
from userseg.adapters.directory.connect import Bound, ConnectionLost, Connector, Secret
from userseg.adapters.directory.fullread import FullRead
from userseg.adapters.directory.reader import Reader, Scope, SearchModes
from userseg.directory.model import (
    DirectoryChanges,
    DirectoryImage,
    DirectorySettings,
    DirectorySource,
    DirectoryUser,
    Progress,
    SyncCursor,
)

log = logging.getLogger("userseg.directory")

T = TypeVar("T")

# Measured with the DC on the same 2 cores (20,206 users, 2,000 groups): fullread.py's docstring.
READ_CONNECTIONS = 2
USER_PARTITIONS = 2


class LdapDirectory(DirectorySource):
    """Active Directory over ldap3 (LDAPS/StartTLS, simple bind or GSSAPI), with failover.

    `netns`: run the sockets in that network namespace (a name under /run/netns);
    None uses the process's own network.  `password`: for tests and embedding;
    normally the password is read from settings.password_file or the systemd
    credential at each connect.
    """

    def __init__(
        self, settings: DirectorySettings, *, netns: str | None = None, password: str | None = None
    ) -> None:
        self.settings = settings
        self.netns = netns
        self._secret = Secret(password) if password is not None else None
        self._connector = Connector(settings, netns, self._secret)
        self._bound: Bound | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()  # ends running watch() sessions too
        self._closed = False
        # Read `member` in slices of this many values (None: as the server cuts them, 1,500 on AD).
        # Samba returns every value unless a range is asked for, so tests set it to exercise
        # range retrieval against a real server.
        self.member_window: int | None = None
        # Full reads (fullread.py): this many connections at once (1: the read connection alone),
        # the user search split into this many uSNCreated ranges.
        self.read_connections = READ_CONNECTIONS
        self.user_partitions = USER_PARTITIONS
        # Plain searches first, paged when the server caps them (reader.py); False pages everything.
        self.searches = SearchModes(plain=True)
        self._usn_cuts: dict[str, list[int]] = {}  # invocationId -> where the last full read split

    def __repr__(self) -> str:
        servers = ", ".join(s.url for s in self.settings.servers)
        return f"LdapDirectory([{servers}], netns={self.netns!r})"

    # -- connection management -----------------------------------------------------------------

    @property
    def server_url(self) -> str | None:
        """The URL of the DC the read connection is bound to (None before the first read)."""
        bound = self._bound
        return bound.url if bound is not None else None

    def _drop(self) -> None:
        if self._bound is not None:
            self._bound.close()
            self._bound = None

    def _with_reader(self, op: Callable[[Reader], T]) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError("LdapDirectory is closed")
            reused = self._bound is not None
            if self._bound is None:
                self._bound = self._connector.connect()
            try:
                return op(self._reader(self._bound))
            except ConnectionLost as exc:
                self._drop()
                if not reused:
                    raise
                log.info("directory connection was dead (%s); reconnecting", exc)
            except BaseException:
                # a failed read may leave a half-consumed paged search behind: start clean next time
                self._drop()
                raise
            self._bound = self._connector.connect()
            try:
                return op(self._reader(self._bound))
            except BaseException:
                self._drop()
                raise

    def _reader(self, bound: Bound) -> Reader:
        return Reader(bound, self.settings, self.member_window, self.searches)

    # -- DirectorySource -----------------------------------------------------------------------

    def read_all(self, progress: Progress | None = None) -> tuple[DirectoryImage, SyncCursor]:
        def full_read(reader: Reader) -> tuple[DirectoryImage, SyncCursor]:
            server, database = reader.bound.server, reader.bound.root.invocation_id
            learned = self._usn_cuts.get(database)  # USNs mean something on their database only
            read = FullRead(
                reader,
                lambda: self._reader(self._connector.connect_to(server)),
                connections=self.read_connections,
                partitions=self.user_partitions,
                cuts=learned,
                progress=progress,
            )
            result = read.run()
            self._usn_cuts = {database: read.learned_cuts}
            return result

        return self._with_reader(full_read)

    def read_changes(self, cursor: SyncCursor) -> tuple[DirectoryChanges, SyncCursor]:
        return self._with_reader(lambda reader: changes.read_changes(reader, cursor))

    def read_notified(self, dns: Collection[str]) -> DirectoryChanges | None:
        """The notified entries, read one by one (no USN scan); None when any is not in scope.

        Samba has no index on uSNChanged, so read_changes scans the whole
        database (~0.8 s at 22k objects); a change notification names its
        entry, and a base read of it costs ~1 ms.  An entry that is deleted,
        moved out of scope or not ours cannot be settled this way: None tells
        the caller to run the USN-based read_changes instead.
        """

        def read(reader: Reader) -> DirectoryChanges | None:
            users, groups = changes.read_entries(reader, dns)
            if len(users) + len(groups) < len(dns):
                return None
            return DirectoryChanges(users=tuple(users.values()), groups=tuple(groups.values()))

        return self._with_reader(read)

    def read_user(self, name: str) -> DirectoryUser | None:
        """Look one in-scope account up by sAMAccountName, userPrincipalName or DOMAIN\\name."""
        return self._with_reader(lambda reader: reader.read_user(name))

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        if self._closed:
            raise RuntimeError("LdapDirectory is closed")
        connector = Connector(self.settings, self.netns, self._secret)
        try:
            watch_mod.watch(
                connector,
                lambda bound: Scope.of(self.settings, bound.root.default_nc),
                on_change,
                watch_mod.StopSignal(stop, self._closing),
            )
        finally:
            connector.close()

    def close(self) -> None:
        """Unbind the read connection, end running watch() calls (within ~0.25 s), stop the threads."""
        self._closing.set()
        with self._lock:
            self._closed = True
            self._drop()
            self._connector.close()
