"""Shared helpers for the AD adapter tests: settings for a lab DC, polling, LDIF builders."""

from __future__ import annotations

import base64
import ipaddress
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from userseg.adapters.directory import LdapDirectory
from userseg.directory.model import DirectoryServer, DirectorySettings, TlsMode

T = TypeVar("T")


def bind_user(dc: Any) -> str:
    """The admin as a UPN (AD accepts a DN, a UPN or DOMAIN\\name for a simple bind)."""
    user = str(dc.admin_user)
    if "@" in user or "=" in user or "\\" in user:
        return user
    realm = str(dc.fqdn).split(".", 1)[1]
    return f"{user}@{realm}"


def server_of(dc: Any, tls: TlsMode = TlsMode.LDAPS) -> DirectoryServer:
    return DirectoryServer(str(dc.address), 636 if tls is TlsMode.LDAPS else 389, tls)


def settings_for(dc: Any, *servers: DirectoryServer, **kw: Any) -> DirectorySettings:
    """LDAPS with CA validation against `dc` (or the given servers), the admin as bind user."""
    kw.setdefault("ca_file", Path(dc.ca_file))
    kw.setdefault("server_name", dc.fqdn)
    kw.setdefault("connect_timeout", 2.0)
    kw.setdefault("operation_timeout", 20.0)
    kw.setdefault("bind_user", bind_user(dc))
    return DirectorySettings(servers=servers or (server_of(dc),), **kw)


def directory_for(dc: Any, *servers: DirectoryServer, **kw: Any) -> LdapDirectory:
    return LdapDirectory(settings_for(dc, *servers, **kw), netns=dc.ns, password=dc.admin_password)


def unused_address(*dcs: Any) -> str:
    """An address in the DCs' /24 that nobody answers on (for failover tests)."""
    taken = {str(dc.address) for dc in dcs}
    net = ipaddress.ip_network(f"{dcs[0].address}/24", strict=False)
    for host in reversed(list(net.hosts())):
        if str(host) not in taken:
            return str(host)
    raise AssertionError("no free address")


def poll(check: Callable[[], T | None], timeout: float, interval: float = 0.05, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(interval)


def token(length: int = 6) -> str:
    return uuid.uuid4().hex[:length]


def ldif_value(name: str, value: str) -> str:
    """One LDIF attribute line; base64 when the value is not a plain ASCII SAFE-STRING (RFC 2849)."""
    if value.isascii() and value.isprintable() and not value.startswith((" ", ":", "<")):
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(value.encode()).decode()}"


def ou_ldif(dn: str) -> str:
    return f"dn: {dn}\nobjectClass: organizationalUnit\n"


def user_ldif(dn: str, sam: str, upn: str = "", display: str = "") -> str:
    lines = [f"dn: {dn}", "objectClass: user", ldif_value("sAMAccountName", sam)]
    if upn:
        lines.append(ldif_value("userPrincipalName", upn))
    if display:
        lines.append(ldif_value("displayName", display))
    return "\n".join(lines) + "\n"


def group_ldif(dn: str, sam: str, members: list[str]) -> str:
    lines = [f"dn: {dn}", "objectClass: group", ldif_value("sAMAccountName", sam)]
    lines += [ldif_value("member", m) for m in members]
    return "\n".join(lines) + "\n"
