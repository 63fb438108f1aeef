"""Bulk Active Directory test data as LDIF, and a parallel loader for lab DCs.

Why LDIF through ldapadd rather than ldap3 adds or samba-tool: ldapadd over LDAPS
costs about the same per user (~10 ms on a fresh DC) as any other way of adding (the server's
transaction dominates), needs no Python round trip per entry, and the same text
is what an admin would feed a real AD. samba-tool is ~0.26 s per user.

Writing LDIF that survives hostile values: every value that is not an RFC 2849
SAFE-STRING (non-ASCII, control characters, a leading space, ``:`` or ``<``, a
trailing space) is written base64 (``attr:: ...``), and every DN component is
escaped per RFC 4514 (`escape_dn_value`), so ``*)(|(cn=*``, ``a,b+c``, unicode
and 256-character values arrive exactly.

Ordering: a group can list another group as a member only once that group
exists. `groups_ldif` emits groups in nesting order and separates the levels with
a barrier comment; `bulk_load` loads everything before a barrier (in parallel)
before it starts on what follows. Every generator starts its output with a
barrier, so ``ou_ldif(...) + users_ldif(...) + groups_ldif(...)`` loads in order.

Limits Samba 4.17 enforces (measured, tests/lab/test_samba.py): ``cn`` (and so
the RDN) at most 64 characters, ``description`` at most 1024, no ``*`` (nor
the other characters AD forbids) in ``sAMAccountName``. Samba does *not* hold
user sAMAccountNames to AD's 20 characters (21 and more are accepted); Windows
does, so keep test names to 20.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from userseg.lab.samba_dc import SambaDC
from userseg.lab.topology import LabCommandError

BARRIER = "# userseg-ldif-barrier"
UF_ACCOUNTDISABLE = 0x2
UF_PASSWD_NOTREQD = 0x20
UF_NORMAL_ACCOUNT = 0x200
GROUP_GLOBAL_SECURITY = -2147483646  # 0x80000002: global scope, security enabled
DEFAULT_PARALLEL = 1  # more loaders measured no faster (see bulk_load)

Value = str | bytes  # bytes are always written base64 (binary attributes, unicodePwd)
Attrs = Mapping[str, Value | Sequence[Value]]


# -- names ----------------------------------------------------------------------------------------------
def escape_dn_value(value: str) -> str:
    """Escape an attribute value for use in a DN (RFC 4514 section 2.4).

    ldap3's escape_rdn is close but fails on "" and writes NUL as backslash-NUL;
    this one escapes ``\\ , + " < > ; =``, NUL as ``\\00``, a leading ``#`` or
    space and a trailing space.
    """
    out = []
    for i, ch in enumerate(value):
        if ch in '\\,+"<>;=':
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        elif (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def container_dn(base_dn: str, ou: str | None, default: str = "CN=Users") -> str:
    """``OU=<ou>,<base>`` or the default container (CN=Users, where AD puts new accounts)."""
    return f"OU={escape_dn_value(ou)},{base_dn}" if ou else f"{default},{base_dn}"


def user_dn(base_dn: str, cn: str, ou: str | None = None) -> str:
    return f"CN={escape_dn_value(cn)},{container_dn(base_dn, ou)}"


def group_dn(base_dn: str, cn: str, ou: str | None = None) -> str:
    return f"CN={escape_dn_value(cn)},{container_dn(base_dn, ou)}"


def dns_domain(base_dn: str) -> str:
    """DC=lab,DC=example -> lab.example (the default UPN suffix)."""
    return ".".join(p.split("=", 1)[1] for p in base_dn.split(",") if p.strip().upper().startswith("DC="))


# -- LDIF -----------------------------------------------------------------------------------------------
def _safe(value: str) -> bool:
    """RFC 2849 SAFE-STRING, and no trailing space (ldapadd would keep it, but readers trim)."""
    if not value:
        return True
    if value[0] in " :<" or value[-1] == " ":
        return False
    return all(" " <= ch <= "~" for ch in value)


def ldif_line(attr: str, value: Value) -> str:
    if isinstance(value, str) and _safe(value):
        return f"{attr}: {value}"
    raw = value if isinstance(value, bytes) else value.encode()
    return f"{attr}:: {base64.b64encode(raw).decode()}"


def ldif_entry(dn: str, attrs: Attrs) -> str:
    """One add record; a value may be str, bytes, or a sequence of them (several values)."""
    lines = [ldif_line("dn", dn)]
    for attr, values in attrs.items():
        for value in [values] if isinstance(values, str | bytes) else values:
            lines.append(ldif_line(attr, value))
    return "\n".join(lines) + "\n\n"


def ou_ldif(base_dn: str, ou: str, description: str | None = None) -> str:
    attrs: dict[str, Value | Sequence[Value]] = {"objectClass": "organizationalUnit", "ou": ou}
    if description:
        attrs["description"] = description
    return f"{BARRIER}\n\n" + ldif_entry(container_dn(base_dn, ou), attrs)


def users_ldif(
    base_dn: str,
    names: Iterable[str],
    ou: str | None = None,
    disabled: Iterable[str] = (),
    *,
    password: str | None = None,
    attrs: Mapping[str, Attrs] | None = None,
    upn_suffix: str | None = None,
) -> str:
    """User accounts named `names` (sAMAccountName, and cn unless attrs give one) in OU `ou`.

    Without `password` the accounts are enabled but have none (PASSWD_NOTREQD):
    they exist for directory sync, not for logons. With it (LDAPS only) they can
    bind and kinit; Samba hashes it on every add, which costs time in bulk.
    `attrs[name]` adds or overrides attributes of one user (``cn`` also moves the
    DN: use ``user_dn(base_dn, cn, ou)``).
    """
    off = {n.casefold() for n in disabled}
    suffix = upn_suffix or dns_domain(base_dn)
    out = [f"{BARRIER}\n\n"]
    for name in names:
        uac = UF_NORMAL_ACCOUNT | (0 if password else UF_PASSWD_NOTREQD)
        uac |= UF_ACCOUNTDISABLE if name.casefold() in off else 0
        entry: dict[str, Value | Sequence[Value]] = {
            "objectClass": "user",
            "cn": name,
            "sAMAccountName": name,
            "userPrincipalName": f"{name}@{suffix}",
            "userAccountControl": str(uac),
        }
        if password is not None:  # AD wants the quoted password in UTF-16LE, over an encrypted channel
            entry["unicodePwd"] = f'"{password}"'.encode("utf-16-le")
        entry.update((attrs or {}).get(name, {}))
        cn = entry["cn"]
        out.append(ldif_entry(user_dn(base_dn, cn if isinstance(cn, str) else name, ou), entry))
    return "".join(out)


def groups_ldif(
    base_dn: str,
    groups: Mapping[str, Iterable[str]],
    ou: str | None = None,
    *,
    attrs: Mapping[str, Attrs] | None = None,
    group_type: int = GROUP_GLOBAL_SECURITY,
) -> str:
    """Groups (name -> member DNs: users, or groups of this mapping for nesting) in OU `ou`.

    Groups that are members of others come first, one barrier per nesting level,
    so bulk_load can add each level in parallel. A cycle raises ValueError (AD
    allows cycles, but only by modifying members after both groups exist).
    """
    members = {name: list(ms) for name, ms in groups.items()}
    by_dn = {group_dn(base_dn, name, ou).casefold(): name for name in members}
    level: dict[str, int] = {}

    def depth(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise ValueError(f"group nesting cycle: {' -> '.join((*path, name))}")
        if name not in level:
            inner = [by_dn[m.casefold()] for m in members[name] if m.casefold() in by_dn]
            level[name] = 1 + max((depth(g, (*path, name)) for g in inner), default=-1)
        return level[name]

    for name in members:
        depth(name, ())
    out: list[str] = []
    for lvl in range(max(level.values(), default=-1) + 1):
        out.append(f"{BARRIER}\n\n")
        for name in (n for n in members if level[n] == lvl):
            entry: dict[str, Value | Sequence[Value]] = {
                "objectClass": "group",
                "cn": name,
                "sAMAccountName": name,
                "groupType": str(group_type),
            }
            if members[name]:
                entry["member"] = members[name]
            entry.update((attrs or {}).get(name, {}))
            out.append(ldif_entry(group_dn(base_dn, name, ou), entry))
    return "".join(out)


# -- loading --------------------------------------------------------------------------------------------
def split_stages(ldif: str) -> list[list[str]]:
    """LDIF -> stages (separated by BARRIER lines) of records (separated by blank lines)."""
    stages: list[list[str]] = [[]]
    for block in ldif.replace("\r\n", "\n").split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        if lines[0] == BARRIER:
            if stages[-1]:
                stages.append([])
            lines = lines[1:]
        if lines and not all(ln.startswith("#") for ln in lines):
            stages[-1].append("\n".join(lines) + "\n")
    return [s for s in stages if s]


@dataclass(frozen=True)
class BulkResult:
    entries: int
    seconds: float
    parallel: int

    @property
    def rate(self) -> float:
        """Entries per second."""
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


def bulk_load(dc: SambaDC, ldif: str, parallel: int = DEFAULT_PARALLEL) -> BulkResult:
    """Add (or modify: records may carry changetype) all records, `parallel` ldapadd processes a stage.

    Stages (see BARRIER) load one after the other; each stage is cut into
    `parallel` contiguous chunks fed to as many concurrent ldapadd processes.
    Samba serialises writes on its database lock, so parallel loaders gain
    nothing measurable: on 2 vCPUs, 2,000 users into a fresh DC took 17-21 s
    (94-118 users/s) with 1, 2, 3 or 4 loaders alike, and 200 groups of 20-21
    members 2.7-3.4 s (59-75/s). The rate falls as the domain grows (an add
    rewrites index records listing every object of its class): with the mdb
    backend from ~130/s for the first thousands to ~75/s past 10,000 users.
    Raises LabCommandError with ldapadd's message if any chunk fails (the other
    chunks of that stage still finish; nothing is rolled back).
    """
    workdir = dc.workdir / "bulk"
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.monotonic()
    total = 0
    for n_stage, records in enumerate(split_stages(ldif)):
        n = max(1, min(parallel, len(records)))
        size = -(-len(records) // n)
        chunks = [records[i : i + size] for i in range(0, len(records), size)]
        procs: list[tuple[Path, list[str], subprocess.Popen[str]]] = []
        try:
            for i, chunk in enumerate(chunks):
                path = workdir / f"load-{id(records):x}-{n_stage}-{i}.ldif"
                path.write_text("\n".join(chunk))
                argv, env = dc.ldif_command("ldapadd", path)
                proc = subprocess.Popen(
                    argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                procs.append((path, argv, proc))
            failures = []
            for _path, argv, proc in procs:
                out, err = proc.communicate()
                if proc.returncode != 0:
                    failures.append(LabCommandError(proc.returncode, argv, out, err))
            if failures:
                raise failures[0]
        finally:
            for path, _argv, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                path.unlink(missing_ok=True)
        total += len(records)
    return BulkResult(total, time.monotonic() - started, parallel)
