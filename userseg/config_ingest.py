"""The [ingest] section: mapping rules, the login sources and the HTTP push listener.

Every source has a name (its events' provenance, its persisted position, its
counters) and a type.  Rule keys set in [ingest] are the defaults of every
source; a source may override any of them.  `ignore_users` replaces the
default list, `extra_ignore_users` adds to it (the usual wish: "also ignore
svc-*", without restating the built-in `*$` and friends).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from userseg.config_schema import Section
from userseg.core.ingest_rules import IngestRules, SourceRules
from userseg.events.settings import (
    ApiSettings,
    HttpSourceSettings,
    IngestSettings,
    SambaLogSettings,
    SourceKind,
    SourceSettings,
    SyslogSettings,
    TlsFiles,
)
from userseg.model import AddressRange

FORMAT_NAMES = ("auto", "samba", "nxlog", "winlogbeat", "snare", "xml")
TOKEN_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")


def parse_ingest(
    sec: Section,
    default_ttl: int,
    gateway_networks: tuple[AddressRange, ...],
    always_ignore: tuple[str, ...] = (),
) -> IngestSettings | None:
    """None when the section is absent (no sources: mappings come from the CLI/API only).

    `always_ignore` (the directory's bind account) is added to every source's
    ignore list: userseg's own LDAP binds must never map the gateway's address.
    """
    if not sec.has_any():
        return None
    base = _rules(sec, SourceRules("default", ttl=default_ttl, include_networks=gateway_networks))
    base = replace(base, ignore_users=_merge(base.ignore_users, always_ignore))
    shared_threshold = sec.integer("shared_threshold", 3, 2, 1000)
    shared_window = sec.integer("shared_window", 600, 10, 86400)
    dedupe_window = sec.integer("dedupe_window", 2, 0, 60)
    max_clock_skew = sec.integer("max_clock_skew", 300, 0, 86400)
    kernel_refresh = sec.integer("kernel_refresh", 60, 0, 3600)
    queue_size = sec.integer("queue_size", 100_000, 100, 10_000_000)
    api = _api(sec.table("api"))

    sources: list[SourceSettings] = []
    seen: set[str] = set()
    for entry in sec.tables("sources"):
        source = _source(entry, base, seen)
        if source is not None:
            merged = _merge(source.rules.ignore_users, always_ignore)
            sources.append(replace(source, rules=replace(source.rules, ignore_users=merged)))
    if any(s.kind is SourceKind.HTTP for s in sources) and api is None:
        sec.error("api", "an http source needs [ingest.api] (where the push API listens)")
    sec.finish()
    rules = IngestRules(
        sources={s.name: s.rules for s in sources},
        shared_threshold=shared_threshold,
        shared_window=shared_window,
        dedupe_window=dedupe_window,
        max_clock_skew=max_clock_skew,
        kernel_refresh=kernel_refresh,
        default=base,
    )
    return IngestSettings(rules=rules, sources=tuple(sources), api=api, queue_size=queue_size)


def _merge(globs: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    return globs + tuple(g for g in extra if g not in globs)


def bind_account(bind_user: str) -> str | None:
    """The account name in a bind user written as DOMAIN\\name, name@realm or a DN
    (for a DN this is the CN, which matches only when CN and sAMAccountName agree)."""
    text = bind_user.strip()
    if "\\" in text:
        return text.rsplit("\\", 1)[1] or None
    if "=" in text and "," in text:
        first = text.split(",", 1)[0]
        return first.split("=", 1)[1].strip() or None
    if "@" in text:
        return text.split("@", 1)[0] or None
    return text or None


def _rules(sec: Section, base: SourceRules, name: str | None = None) -> SourceRules:
    ttl = sec.integer("ttl", base.ttl, 60, 604800)
    if sec.has("ignore_users"):
        ignore = tuple(v for _, v in sec.strings("ignore_users"))
    else:
        ignore = base.ignore_users
    ignore += tuple(v for _, v in sec.strings("extra_ignore_users"))
    ignore_types = _logon_types(sec, "ignore_logon_types", base.ignore_logon_types)
    logoff_types = _logon_types(sec, "logoff_logon_types", base.logoff_logon_types)
    include = (
        tuple(sec.parsed("client_networks", AddressRange.parse))
        if sec.has("client_networks")
        else base.include_networks
    )
    exclude = (
        tuple(sec.parsed("exclude_networks", AddressRange.parse))
        if sec.has("exclude_networks")
        else base.exclude_networks
    )
    return SourceRules(
        name=name or base.name,
        ttl=ttl,
        ignore_users=ignore,
        ignore_logon_types=ignore_types,
        logoff_logon_types=logoff_types,
        include_networks=include,
        exclude_networks=exclude,
    )


def _logon_types(sec: Section, key: str, default: frozenset[int]) -> frozenset[int]:
    values = sec.integers(key, 0, 15)  # Windows logon types
    return default if values is None else frozenset(values)


def _source(entry: Section, base: SourceRules, seen: set[str]) -> SourceSettings | None:
    name = entry.name("name")
    kind = entry.choice("type", SourceKind, None, required=True)
    if name is not None:
        if name in seen:
            entry.error("name", f"duplicate source name {name!r}")
        seen.add(name)
    rules = _rules(entry, base, name or "?")
    samba = syslog = http = None
    if kind is SourceKind.SAMBA_LOG:
        path = entry.string("path", "/var/log/samba/auth_audit.log")
        if not path.startswith("/"):
            entry.error("path", f"must be an absolute path, got {path!r}")
        start = entry.string("start", "end")
        if start not in ("end", "beginning"):
            entry.error("start", f"must be 'end' or 'beginning', got {start!r}")
        samba = SambaLogSettings(Path(path), start_at_end=start == "end")
    elif kind is SourceKind.SYSLOG:
        syslog = _syslog(entry)
    elif kind is SourceKind.HTTP:
        token = entry.string("token_hash", "", required=True)
        if token and not TOKEN_HASH_RE.fullmatch(token):
            entry.error(
                "token_hash",
                "must be 'sha256:' and 64 lower-case hex digits (`userseg token new NAME` prints one)",
            )
        allowed = tuple(entry.parsed("allowed_senders", AddressRange.parse))
        http = HttpSourceSettings(token, allowed)
    entry.finish()
    if name is None or kind is None:
        return None
    return SourceSettings(name, kind, rules, samba, syslog, http)


def _syslog(entry: Section) -> SyslogSettings | None:
    url = entry.string("listen", "", required=True)
    parts = urlsplit(url)
    scheme = parts.scheme
    try:
        port = parts.port
    except ValueError:
        port = None
    if scheme not in ("udp", "tcp", "tls") or not parts.hostname or port is None or parts.path:
        entry.error(
            "listen", f"must look like udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT, got {url!r}"
        )
    fmt = entry.string("format", "auto")
    if fmt not in FORMAT_NAMES:
        entry.error("format", f"must be one of {', '.join(FORMAT_NAMES)}, got {fmt!r}")
    allowed = tuple(entry.parsed("allowed_senders", AddressRange.parse))
    max_conn = entry.integer("max_connections", 256, 1, 65536)
    tls = _tls(entry, required=scheme == "tls", allow_client_ca=True)
    if tls is not None and scheme != "tls":
        entry.error("tls_cert", "TLS files are only used with a tls:// listener")
    return SyslogSettings(url, fmt, allowed, tls, max_conn)


def _tls(sec: Section, *, required: bool, allow_client_ca: bool) -> TlsFiles | None:
    cert = sec.string("tls_cert", "")
    key = sec.string("tls_key", "")
    ca = sec.string("tls_client_ca", "") if allow_client_ca else ""
    if not (cert or key or ca):
        if required:
            sec.error("tls_cert", "a tls:// listener needs tls_cert and tls_key")
        return None
    if not cert or not key:
        sec.error("tls_cert" if not cert else "tls_key", "tls_cert and tls_key must be set together")
        return None
    for k, v in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", ca)):
        if v and not Path(v).is_file():
            sec.error(k, f"{v!r} is not a readable file")
    return TlsFiles(Path(cert), Path(key), Path(ca) if ca else None)


def _api(sec: Section) -> ApiSettings | None:
    if not sec.has_any():
        return None
    listen = sec.string("listen", "", required=True)
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    port = int(port_text) if port_text.isdigit() else -1
    if not host or not 0 < port < 65536:
        sec.error("listen", f"must be HOST:PORT (e.g. 127.0.0.1:8443 or [::]:8443), got {listen!r}")
    tls = _tls(sec, required=False, allow_client_ca=False)
    max_body = sec.integer("max_body", 1 << 20, 1024, 64 << 20)
    max_events = sec.integer("max_events", 10_000, 1, 1_000_000)
    sec.finish()
    return ApiSettings(host, port, tls, max_body, max_events)
