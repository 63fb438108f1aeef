"""What a directory read hands over: raw AD entries, the cursor, and the settings.

These types are the contract between the LDAP adapter (which fills them from
ldap3 results) and the pure membership resolver and the sync service (which
never see ldap3).  Entries are keyed by objectGUID because a DN changes when
an object is renamed or moved, a GUID never does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol


class DirectoryError(RuntimeError):
    """A directory operation failed (unreachable, bind refused, read failed half-way).

    The message names the server and the problem and never contains a secret.
    Callers treat it as "nothing was learnt": the last good state stays.
    """


class CursorInvalid(DirectoryError):
    """The incremental cursor cannot be used (another DC, restored database): do a full read."""


@dataclass(frozen=True)
class DirectoryUser:
    guid: str  # objectGUID as a lower-case UUID string
    dn: str
    sam: str  # sAMAccountName as stored in AD (not canonicalised)
    upn: str = ""  # userPrincipalName, "" when unset
    sid: str = ""  # objectSid in S-1-5-21-... form
    display_name: str = ""
    mail: str = ""
    disabled: bool = False  # userAccountControl bit 0x2 (ACCOUNTDISABLE)
    primary_group_id: int | None = None  # RID of the primary group (513 = Domain Users)
    usn: int = 0  # uSNChanged on the DC it was read from
    expires: int = 0  # accountExpires (100 ns ticks since 1601; 0 or 2**63-1 = never)


@dataclass(frozen=True)
class DirectoryGroup:
    guid: str
    dn: str
    name: str  # sAMAccountName of the group (cn when it has none)
    sid: str = ""
    members: frozenset[str] = frozenset()  # member DNs, every range of them (not only the first 1,500)
    usn: int = 0
    description: str = ""


@dataclass(frozen=True)
class DirectoryImage:
    """Everything a full read found, in scope of the configured bases and filters."""

    domain_sid: str  # S-1-5-21-x-y-z; with a primaryGroupID it names the primary group
    users: Mapping[str, DirectoryUser] = field(default_factory=dict)  # by guid
    groups: Mapping[str, DirectoryGroup] = field(default_factory=dict)  # by guid


@dataclass(frozen=True)
class DirectoryChanges:
    """What changed since a cursor: new or modified entries in scope, and GUIDs that left.

    `deleted` holds objects deleted in AD and objects that left the sync's scope
    (moved out of the base DNs, no longer matching the filter); both mean
    "forget this entry".
    """

    users: tuple[DirectoryUser, ...] = ()
    groups: tuple[DirectoryGroup, ...] = ()
    deleted: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.users or self.groups or self.deleted)


@dataclass(frozen=True)
class SyncCursor:
    """Where an incremental read continues: USNs are local to one DC's database."""

    server: str  # the URL the read was made against, e.g. "ldaps://198.18.20.10:636"
    invocation_id: str  # the DC database's invocationId (changes on restore); USNs compare only within one
    highest_usn: int  # highestCommittedUSN read *before* the search, so nothing is skipped


class TlsMode(Enum):
    LDAPS = "ldaps"  # TLS from the first byte, port 636
    STARTTLS = "starttls"  # plain connect on 389, then StartTLS before the bind
    NONE = "none"  # no TLS; AD refuses a simple bind then unless "require strong auth = no"


class AuthMethod(Enum):
    SIMPLE = "simple"
    GSSAPI = "gssapi"  # Kerberos with the process's credential cache / keytab


class StalePolicy(Enum):
    KEEP = "keep"  # past max_staleness keep enforcing the last good directory state
    FAIL_CLOSED = "fail-closed"  # past max_staleness treat every client as unknown


@dataclass(frozen=True)
class DirectoryServer:
    host: str  # name or address; with TLS validation, the certificate must match server_name or this
    port: int
    tls: TlsMode
    tls_name: str | None = None  # expected certificate name of this server (directory.server_names)

    @property
    def url(self) -> str:
        scheme = "ldaps" if self.tls is TlsMode.LDAPS else "ldap"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class DirectorySettings:
    """The [directory] section of the config file, validated."""

    servers: tuple[DirectoryServer, ...]  # tried in order; the first that binds wins
    bind_user: str = ""  # DN, UPN (user@realm) or DOMAIN\\user; "" with GSSAPI
    password_file: Path | None = None  # a file holding only the password (trailing newline ignored)
    password_credential: str | None = None  # a systemd credential name ($CREDENTIALS_DIRECTORY/<name>)
    auth: AuthMethod = AuthMethod.SIMPLE
    ca_file: Path | None = None  # PEM bundle to validate the DC's certificate; None: system store
    tls_validate: bool = True  # False only for labs: accepts any certificate
    server_name: str | None = None  # expected certificate name for every server (one name, e.g. behind a VIP)
    base_dn: str | None = None  # None: the DC's defaultNamingContext
    user_base_dns: tuple[str, ...] = ()  # empty: base_dn
    group_base_dns: tuple[str, ...] = ()  # empty: base_dn
    user_filter: str = ""  # extra LDAP filter ANDed to the user search, e.g. "(department=Sales)"
    group_filter: str = ""  # extra LDAP filter ANDed to the group search
    group_include: tuple[str, ...] = ()  # canonical-name globs of groups to keep; empty: all
    page_size: int = 500
    connect_timeout: float = 5.0
    operation_timeout: float = 60.0
    notifications: bool = True  # AD change notification (persistent search) as the trigger
    incremental_interval: float = 60.0  # seconds; the safety net behind notifications
    full_interval: float = 3600.0  # seconds; catches anything incremental reads missed
    max_staleness: float = 86400.0  # seconds without a successful sync before on_stale applies
    on_stale: StalePolicy = StalePolicy.KEEP
    max_delete_fraction: float = 0.5  # refuse a sync that would delete more than this share of users


Progress = Callable[[str, int], None]  # (what, how many so far): "users", 1500


class DirectorySource(Protocol):
    """The directory as the sync service sees it; userseg.adapters.directory.ldap implements it."""

    def read_all(self, progress: Progress | None = None) -> tuple[DirectoryImage, SyncCursor]:
        """Read every user and group in scope (paged, all member ranges).

        Raises DirectoryError when any part fails: a partial image is never returned.
        """
        ...

    def read_changes(self, cursor: SyncCursor) -> tuple[DirectoryChanges, SyncCursor]:
        """Entries changed, deleted or gone out of scope since `cursor`.

        Raises CursorInvalid when the reachable DC is not the cursor's (failover,
        restore), DirectoryError on any other failure.
        """
        ...

    def read_notified(self, dns: Collection[str]) -> DirectoryChanges | None:
        """Read just these (notified) entries; None when that cannot settle them (deleted, out of scope).

        The cursor does not move: the next read_changes re-reads them, which is harmless.
        """
        ...

    def read_user(self, name: str) -> DirectoryUser | None:
        """One account by sAMAccountName, userPrincipalName or DOMAIN\\name (escaped filter); None if absent.

        For the login-event ingester meeting an account it has not seen yet.
        """
        ...

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        """Block until `stop` is set, calling on_change(dn) for each AD change notification.

        Reconnects with backoff (failing over along the server list) and calls
        on_change("") after every (re)connect, because changes made while the
        watch was down were not notified.
        """
        ...

    def close(self) -> None: ...
