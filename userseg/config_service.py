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


def split_listen(text: str) -> tuple[str, int] | None:
    """HOST:PORT or [IPV6]:PORT -> (host, port); None if it is neither.

    An IPv6 address needs its brackets: "::1" alone would otherwise read as host
    ":" and port 1, and "fe80::1:9715" could mean either of two things.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return None  # brackets are for IPv6 addresses only
    elif any(c in host for c in ":[]"):
        return None
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)


def parse_service(sec: Section) -> ServiceSettings:
    listen = sec.string("listen", DEFAULT_OPS_LISTEN).strip()
    host: str | None = None
    port = 0
    if listen:
        parsed = split_listen(listen)
        if parsed is None:
            example = f"{DEFAULT_OPS_LISTEN} or [::1]:9715"
            sec.error("listen", f'expected HOST:PORT (e.g. {example}) or "" to disable, not {listen!r}')
        else:
            host, port = parsed
    timeout = sec.number("startup_sync_timeout", 20.0, 0, 600)
    interval = sec.number("status_interval", 2.0, 0.2, 60)
    fmt = sec.choice("log_format", LogFormat, LogFormat.TEXT) or LogFormat.TEXT
    sec.finish()
    return ServiceSettings(host, port, timeout, interval, fmt)
