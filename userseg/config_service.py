"""The [service] section: how `userseg serve` runs (health/metrics endpoint, start-up, logs)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from userseg.config_schema import Section

DEFAULT_OPS_LISTEN = "127.0.0.1:9715"


class LogFormat(Enum):
    TEXT = "text"  # "<level>userseg.x: message key=value": journald reads the <N> priority prefix
    JSON = "json"  # one JSON object per line, for log shippers


@dataclass(frozen=True)
class ServiceSettings:
    ops_host: str | None = "127.0.0.1"  # None: no metrics/health endpoint
    ops_port: int = 9715
    startup_sync_timeout: float = 20.0
    status_interval: float = 2.0
    log_format: LogFormat = LogFormat.TEXT


def parse_service(sec: Section) -> ServiceSettings:
    listen = sec.string("listen", DEFAULT_OPS_LISTEN).strip()
    host: str | None = None
    port = 0
    if listen:
        host_part, sep, port_part = listen.rpartition(":")
        host_part = host_part.strip("[]")
        if not sep or not host_part or not port_part.isdigit() or not 0 <= int(port_part) <= 65535:
            sec.error(
                "listen", f'expected HOST:PORT (e.g. {DEFAULT_OPS_LISTEN}) or "" to disable, not {listen!r}'
            )
        else:
            host, port = host_part, int(port_part)
    timeout = sec.number("startup_sync_timeout", 20.0, 0, 600)
    interval = sec.number("status_interval", 2.0, 0.2, 60)
    fmt = sec.choice("log_format", LogFormat, LogFormat.TEXT) or LogFormat.TEXT
    sec.finish()
    return ServiceSettings(host, port, timeout, interval, fmt)
