"""Validated settings of login ingestion: the rules, and each configured source.

Model types only (parsed by `config_ingest.py`), so the pipeline and the
adapters never re-parse strings from the config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from userseg.core.ingest_rules import IngestRules, SourceRules
from userseg.model import AddressRange


class SourceKind(str, Enum):
    SAMBA_LOG = "samba-log"
    SYSLOG = "syslog"
    HTTP = "http"


@dataclass(frozen=True)
class SambaLogSettings:
    path: Path
    start_at_end: bool = True  # first start without a saved position: do not replay old history


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by this CA


@dataclass(frozen=True)
class SyslogSettings:
    url: str  # udp://host:port, tcp://host:port, tls://host:port
    format: str = "auto"
    allowed_senders: tuple[AddressRange, ...] = ()  # empty: any sender
    tls: TlsFiles | None = None
    max_connections: int = 256


@dataclass(frozen=True)
class HttpSourceSettings:
    token_hash: str  # "sha256:<hex>" of the bearer token; the token itself is never stored
    allowed_senders: tuple[AddressRange, ...] = ()


@dataclass(frozen=True)
class SourceSettings:
    name: str
    kind: SourceKind
    rules: SourceRules
    samba: SambaLogSettings | None = None
    syslog: SyslogSettings | None = None
    http: HttpSourceSettings | None = None


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    tls: TlsFiles | None = None
    max_body: int = 1 << 20
    max_events: int = 10_000


@dataclass(frozen=True)
class IngestSettings:
    rules: IngestRules
    sources: tuple[SourceSettings, ...] = ()
    api: ApiSettings | None = None
    queue_size: int = 100_000
