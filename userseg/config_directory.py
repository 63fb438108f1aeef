"""The [directory] section: which domain controllers, how to bind, what to read, how often.

Secure by default: `ldap://` URLs use StartTLS unless `starttls = false` is
written out, certificates are validated, and the bind password is read from a
file or a systemd credential at connect time, never from the config itself
(so the config can live in version control) and never from argv.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from userseg.config_schema import Section
from userseg.directory.model import (
    AuthMethod,
    DirectoryServer,
    DirectorySettings,
    StalePolicy,
    TlsMode,
)

_CREDENTIAL_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_HOST_RE = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
_USERINFO_RE = re.compile(r"//[^/?#]*@")


def parse_directory(sec: Section) -> DirectorySettings | None:
    """Validate [directory]; None when the section is absent (no AD sync configured)."""
    if not sec.has_any():
        sec.finish()
        return None
    starttls = sec.boolean("starttls", True)
    servers = [
        s
        for s in (_server(sec, where, url, starttls) for where, url in sec.strings("servers", required=True))
        if s
    ]
    auth = sec.choice("auth", AuthMethod, AuthMethod.SIMPLE) or AuthMethod.SIMPLE
    bind_user = sec.string("bind_user", "").strip()
    password_file = sec.string("password_file", "").strip()
    credential = sec.string("password_credential", "").strip()
    if auth is AuthMethod.SIMPLE:
        if not bind_user:
            sec.error("bind_user", "missing required key (simple bind needs an account)")
        if bool(password_file) == bool(credential):
            sec.error(
                None,
                "set exactly one of password_file and password_credential (simple bind needs a password)",
            )
    if password_file:
        _check_password_file(sec, Path(password_file))
    if credential and not _CREDENTIAL_RE.fullmatch(credential):
        sec.error("password_credential", f"bad credential name {credential!r} (1-128 of A-Z a-z 0-9 _ . -)")
    ca_file = sec.string("ca_file", "").strip()
    if ca_file and not Path(ca_file).is_file():
        sec.error("ca_file", f"{ca_file} does not exist or is not a file")
    tls_validate = sec.boolean("tls_validate", True)
    server_name = sec.string("server_name", "").strip()
    if server_name and not _HOST_RE.fullmatch(server_name):
        sec.error("server_name", f"bad host name {server_name!r}")
    names = sec.strings("server_names")
    for where, name in names:
        if not _HOST_RE.fullmatch(name.strip()):
            sec.error(where, f"bad host name {name!r}")
    if names and server_name:
        sec.error("server_names", "set server_name (one name for all servers) or server_names, not both")
    elif names and len(names) != len(servers):
        sec.error(
            "server_names",
            f"must name one certificate name per entry of servers ({len(servers)}), got {len(names)}",
        )
    elif names:
        servers = [replace(srv, tls_name=name.strip()) for srv, (_, name) in zip(servers, names, strict=True)]
    base_dn = sec.string("base_dn", "").strip()
    if base_dn:
        _check_dn(sec, "base_dn", base_dn)
    user_bases = tuple(d.strip() for where, d in sec.strings("user_base_dns") if _check_dn(sec, where, d))
    group_bases = tuple(d.strip() for where, d in sec.strings("group_base_dns") if _check_dn(sec, where, d))
    user_filter = _filter(sec, "user_filter")
    group_filter = _filter(sec, "group_filter")
    include = tuple(g.strip() for _, g in sec.strings("group_include"))
    page_size = sec.integer("page_size", 500, 10, 5000)
    connect_timeout = sec.number("connect_timeout", 5.0, 0.5, 120)
    operation_timeout = sec.number("operation_timeout", 60.0, 1, 3600)
    notifications = sec.boolean("notifications", True)
    incremental = sec.number("incremental_interval", 60.0, 5, 86400)
    full = sec.number("full_interval", 3600.0, 60, 7 * 86400)
    staleness = sec.number("max_staleness", 86400.0, 60, 365 * 86400)
    on_stale = sec.choice("on_stale", StalePolicy, StalePolicy.KEEP) or StalePolicy.KEEP
    max_delete = sec.number("max_delete_fraction", 0.5, 0.0, 1.0)
    sec.finish()
    return DirectorySettings(
        servers=tuple(servers),
        bind_user=bind_user,
        password_file=Path(password_file) if password_file else None,
        password_credential=credential or None,
        auth=auth,
        ca_file=Path(ca_file) if ca_file else None,
        tls_validate=tls_validate,
        server_name=server_name or None,
        base_dn=base_dn or None,
        user_base_dns=user_bases,
        group_base_dns=group_bases,
        user_filter=user_filter,
        group_filter=group_filter,
        group_include=include,
        page_size=page_size,
        connect_timeout=connect_timeout,
        operation_timeout=operation_timeout,
        notifications=notifications,
        incremental_interval=incremental,
        full_interval=full,
        max_staleness=staleness,
        on_stale=on_stale,
        max_delete_fraction=max_delete,
    )


def _server(sec: Section, where: str, url: str, starttls: bool) -> DirectoryServer | None:
    # User info may hold a password: it is masked in every message and refused.
    shown = _USERINFO_RE.sub("//***@", url.strip())
    if shown != url.strip():
        sec.error(
            where,
            f"bad server URL {shown!r}: no user or password in the URL "
            "(use bind_user with password_file or password_credential)",
        )
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        sec.error(where, f"bad server URL {url!r}: {exc}")
        return None
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        sec.error(where, f"bad server URL {url!r} (use ldaps://HOST[:PORT] or ldap://HOST[:PORT])")
        return None
    if parts.path not in ("", "/") or "?" in url or "#" in url:
        sec.error(where, f"bad server URL {url!r}: only scheme, host and port are allowed")
        return None
    if port == 0:
        sec.error(where, f"bad server URL {url!r}: port 0")
        return None
    if parts.scheme == "ldaps":
        return DirectoryServer(parts.hostname, port or 636, TlsMode.LDAPS)
    return DirectoryServer(parts.hostname, port or 389, TlsMode.STARTTLS if starttls else TlsMode.NONE)


def _check_password_file(sec: Section, path: Path) -> None:
    """The file must exist and must not be readable by others: it holds a domain credential."""
    try:
        st = path.stat()
    except OSError as exc:
        sec.error("password_file", f"cannot read {path}: {exc.strerror or exc}")
        return
    if not stat.S_ISREG(st.st_mode):
        sec.error("password_file", f"{path} is not a regular file")
    elif st.st_mode & stat.S_IROTH:
        sec.error("password_file", f"{path} is readable by every user (chmod 0600 or 0640 it)")
    elif not os.access(path, os.R_OK):
        sec.error("password_file", f"{path} is not readable by this user")


def _check_dn(sec: Section, where: str, dn: str) -> bool:
    if "=" not in dn or any(c in dn for c in "\x00\r\n"):
        sec.error(where, f"bad DN {dn!r} (e.g. OU=Staff,DC=example,DC=net)")
        return False
    return True


def _filter(sec: Section, key: str) -> str:
    """An LDAP filter fragment, checked for shape: parenthesised and balanced."""
    text = sec.string(key, "").strip()
    if not text:
        return ""
    depth = 0
    escaped = False
    ok = text.startswith("(") and text.endswith(")")
    for ch in text:
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if not escaped:
            depth += ch == "("
            depth -= ch == ")"
            if depth < 0:
                ok = False
        escaped = False
    if not ok or depth != 0 or "\x00" in text:
        sec.error(key, f"bad LDAP filter {text!r} (a parenthesised filter such as (department=Sales))")
        return ""
    return text
