"""The one shape every login source produces, and what a source hands to the pipeline.

Every source (the Samba audit log, syslog, the HTTP push API) turns its input
into a LoginEvent, a Skipped (well-formed, but nothing a mapping is made from)
or a Rejected (malformed, with the reason).  The mapping rules
(`userseg/core/ingest.py`) only ever see LoginEvents, so a new source never
changes how mappings are decided, and `userseg test-parse` can show exactly
what each input line became.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from userseg.model import IPAddress


class EventKind(str, Enum):
    LOGON = "logon"  # 4624, 4768, 4769, 4770, Samba "Authentication" OK / "Authorization", HTTP login
    LOGOFF = "logoff"  # 4634, 4647, HTTP logout
    FAILURE = "failure"  # 4625, a 4768/4769 with a failure status: counted, never mapped


@dataclass(frozen=True, slots=True)
class LoginEvent:
    """One logon, logoff or failed logon, as the source reported it.

    `user` and `domain` are split but not canonicalised ("HR001$", "SHIRE.COM"):
    the rules decide what is ignored and canonicalise, and provenance shows
    what the source really said.
    """

    user: str
    domain: str  # "" when the source does not say
    ip: IPAddress | None  # None: the event carries no client address (most logoffs)
    time: datetime  # tz-aware UTC: when it happened (the receive time if the event has no zone)
    kind: EventKind
    source: str  # the configured source name
    event_id: int | None = None  # Windows event id (Samba logs 4624/4625); None for HTTP push
    logon_type: int | None = None
    host: str = ""  # the computer that logged the event (DC or workstation)
    logon_id: str = ""  # TargetLogonId, pairs a 4634/4647 with its 4624 on the same host
    ttl: int | None = None  # seconds the mapping should live (HTTP push); None: the source's TTL
    detail: tuple[tuple[str, str], ...] = ()  # extra provenance: format, service, auth, status...


@dataclass(frozen=True, slots=True)
class Skipped:
    """Well-formed input that is not a usable login event (another event id, no account...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Malformed input: the reason names the problem (counted, logged rate-limited, never fatal)."""

    reason: str


ParseResult = LoginEvent | Skipped | Rejected


class Sink(Protocol):
    """Where a source adapter delivers what it read; the ingest pipeline implements it.

    `position` is an opaque, source-defined resume point (the Samba follower's
    file offset) that the pipeline persists in the same transaction as the
    mappings derived from everything before it, so a restart neither replays
    nor skips.  `block=False` is for sources that cannot wait (UDP syslog):
    the call returns False when the queue is full and the item was dropped
    (counted by the pipeline); blocking sources get back-pressure instead.
    """

    def emit(
        self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
    ) -> bool: ...
