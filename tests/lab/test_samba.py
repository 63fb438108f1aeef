"""The lab's real Samba DCs and the AD test data they are loaded with.

The DCs are session fixtures (tests/ad_fixtures.py) shared with every AD test, so
these tests create their objects under unique names and stop/start dc1 only in
a try/finally that leaves it running.
"""

from __future__ import annotations

import functools
import json
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from ldap3 import BASE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from tests.ad_fixtures import unique_name
from userseg.lab import Lab, LabCommandError
from userseg.lab.ad_data import (
    BARRIER,
    bulk_load,
    escape_dn_value,
    group_dn,
    groups_ldif,
    ldif_line,
    ou_ldif,
    split_stages,
    user_dn,
    users_ldif,
)
from userseg.lab.samba import SambaDC

T = TypeVar("T")
netns = pytest.mark.netns
HOSTILE = "*)(|(cn=*"


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll with a deadline (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def entry(conn: Any, dn: str, *attrs: str) -> Any:
    assert conn.search(dn, "(objectClass=*)", BASE, attributes=list(attrs) or ["1.1"]), dn
    return conn.entries[0]


def port_open(lab: Lab, host: str, address: str, port: int) -> bool:
    def probe() -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex((address, port)) == 0

    return lab.worker(host).call(probe)


# -- LDIF writer (no DC needed) ------------------------------------------------------------------------
def test_dn_values_are_escaped_per_rfc4514() -> None:
    assert escape_dn_value("a,b+c") == "a\\,b\\+c"
    assert escape_dn_value('"<x>;=\\') == '\\"\\<x\\>\\;\\=\\\\'
    assert escape_dn_value("#lead") == "\\#lead" and escape_dn_value("in#side") == "in#side"
    assert escape_dn_value(" both ") == "\\ both\\ "
    assert escape_dn_value("nul\0") == "nul\\00"
    assert escape_dn_value(HOSTILE) == "*)(|(cn\\=*"
    assert escape_dn_value("") == ""


def test_values_that_are_not_ldif_safe_are_base64() -> None:
    assert ldif_line("cn", "plain value") == "cn: plain value"
    assert ldif_line("cn", HOSTILE) == f"cn: {HOSTILE}"
    for unsafe in (" lead", "trail ", ":colon", "<angle", "Zoë", "a\nb", "日本"):
        assert ldif_line("cn", unsafe).startswith("cn:: "), unsafe
    assert ldif_line("unicodePwd", b'"\x00') == "unicodePwd:: IgA="


def test_groups_come_in_nesting_order_and_cycles_are_refused() -> None:
    base = "DC=lab,DC=example"
    groups = {
        "top": [group_dn(base, "mid"), user_dn(base, "u1")],
        "mid": [group_dn(base, "leaf")],
        "leaf": [user_dn(base, "u2")],
        "solo": [],
    }
    stages = split_stages(users_ldif(base, ["u1", "u2"]) + groups_ldif(base, groups))
    names = [[r.split("\n")[0].split(",")[0] for r in stage] for stage in stages]
    assert names == [
        ["dn: CN=u1", "dn: CN=u2"],
        ["dn: CN=leaf", "dn: CN=solo"],
        ["dn: CN=mid"],
        ["dn: CN=top"],
    ]
    with pytest.raises(ValueError, match="cycle"):
        groups_ldif(base, {"a": [group_dn(base, "b")], "b": [group_dn(base, "a")]})


def test_unique_names_fit_sam_account_name() -> None:
    names = {unique_name("averylongpre") for _ in range(1000)}
    assert len(names) == 1000 and max(map(len, names)) <= 20
    with pytest.raises(ValueError):
        unique_name("Bad-Prefix")


# -- the DC ---------------------------------------------------------------------------------------------
@netns
def test_ldaps_bind_validates_the_certificate_name(ad_lab: Lab, samba_dc: SambaDC) -> None:
    assert samba_dc.ca_file.exists() and samba_dc.url == "ldaps://198.18.20.10:636"
    assert samba_dc.fqdn == "dc1.lab.example" and samba_dc.base_dn == "DC=lab,DC=example"

    def bind(valid_name: str) -> Any:
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(samba_dc.ca_file), valid_names=[valid_name])
        server = Server(samba_dc.address, port=636, use_ssl=True, tls=tls, get_info=None, connect_timeout=5)
        return ad_lab.worker("c1").call(
            lambda: Connection(
                server, user=samba_dc.admin_user, password=samba_dc.admin_password, auto_bind=True
            )
        )

    for name in (samba_dc.fqdn, "DC1.lab.example"):  # Samba's CN is DC1.lab.example; case must not matter
        conn = bind(name)
        assert conn.bound and conn.search(samba_dc.base_dn, "(objectClass=domain)", BASE)
        conn.unbind()
    with pytest.raises(LDAPException, match=r"(?i)certificate|hostname|match"):
        bind("intruder.lab.example")


@netns
def test_samba_tool_creates_a_user_and_adds_it_to_a_group(samba_dc: SambaDC) -> None:
    user, group = unique_name("u"), unique_name("g")
    samba_dc.samba_tool("user", "create", user, "--random-password")
    samba_dc.samba_tool("group", "add", group)
    samba_dc.samba_tool("group", "addmembers", group, user)
    conn = samba_dc.ldap_connection()
    try:
        conn.search(samba_dc.base_dn, f"(sAMAccountName={group})", SUBTREE, attributes=["member"])
        assert conn.entries[0].member.values == [user_dn(samba_dc.base_dn, user)]
        member_of = entry(conn, user_dn(samba_dc.base_dn, user), "memberOf").memberOf.values
        assert member_of == [group_dn(samba_dc.base_dn, group)]
    finally:
        conn.unbind()


@netns
def test_stop_ends_every_process_and_start_brings_the_dc_back(ad_lab: Lab, samba_dc: SambaDC) -> None:
    assert samba_dc.is_running() and len(samba_dc.processes()) > 10
    assert port_open(ad_lab, "c1", samba_dc.address, 636)
    try:
        started = time.monotonic()
        samba_dc.stop()
        print(f"stop: {time.monotonic() - started:.2f} s")
        assert not samba_dc.is_running() and samba_dc.processes() == []
        assert not port_open(ad_lab, "c1", samba_dc.address, 636)
    finally:
        started = time.monotonic()
        samba_dc.start()
        print(f"start: {time.monotonic() - started:.2f} s")
    assert samba_dc.is_running() and port_open(ad_lab, "c1", samba_dc.address, 636)
    samba_dc.ldap_connection("c1").unbind()


@netns
def test_the_audit_log_records_ldap_binds_with_the_client_address(ad_lab: Lab, samba_dc: SambaDC) -> None:
    user, password = unique_name("a"), "Audit-Pa55word!"
    samba_dc.ldif_add(users_ldif(samba_dc.base_dn, [user], password=password))
    upn = f"{user}@lab.example"
    samba_dc.ldap_connection("c1", user=upn, password=password, source_address="198.18.10.12").unbind()
    with pytest.raises(LDAPException):
        samba_dc.ldap_connection("c1", user=upn, password="wrong-Pa55word!", source_address="198.18.10.11")

    def events() -> dict[int, dict[str, Any]] | None:
        found: dict[int, dict[str, Any]] = {}
        for line in samba_dc.audit_log.read_text().splitlines():
            auth = json.loads(line).get("Authentication") if line.strip() else None
            if auth and (auth.get("clientAccount") or "").lower() == upn:
                found[auth["eventId"]] = auth
        return found if {4624, 4625} <= found.keys() else None

    found = poll(events, 10, "4624 and 4625 in the audit log")
    ok, bad = found[4624], found[4625]
    assert ok["remoteAddress"].startswith("ipv4:198.18.10.12:") and ok["status"] == "NT_STATUS_OK"
    assert ok["serviceDescription"] == "LDAP" and ok["logonType"] == 8
    assert (
        bad["remoteAddress"].startswith("ipv4:198.18.10.11:") and bad["status"] == "NT_STATUS_WRONG_PASSWORD"
    )


@netns
def test_hostile_values_round_trip(samba_dc: SambaDC) -> None:
    base, ou = samba_dc.base_dn, unique_name("ou")
    name, cn = unique_name("h"), f'{HOSTILE} #a,b+c="d"<e>;f\\ Zoë'
    description = (("日本語 " + HOSTILE + " ") * 19)[:253] + "end"  # 256 characters, unicode, parentheses
    display = " leading space, Ω, trailing space "
    group = unique_name("hg")
    hostile = {"cn": cn, "description": description, "displayName": display}
    samba_dc.ldif_add(
        ou_ldif(base, ou)
        + users_ldif(base, [name], ou, attrs={name: hostile})
        + groups_ldif(base, {group: [user_dn(base, cn, ou)]}, ou, attrs={group: {"description": HOSTILE}})
    )
    assert len(description) == 256
    conn = samba_dc.ldap_connection()
    try:
        flt = f"(&(objectClass=user)(cn={escape_filter_chars(cn)}))"
        assert conn.search(base, flt, SUBTREE, attributes=["cn", "description", "displayName", "memberOf"])
        (found,) = conn.entries
        assert found.cn.value == cn and found.description.value == description
        assert found.displayName.value == display
        assert [v.lower() for v in found.memberOf.values] == [group_dn(base, group, ou).lower()]
        g = entry(conn, group_dn(base, group, ou), "member", "description")
        assert g.description.value == HOSTILE
        assert conn.search(base, f"(description={escape_filter_chars(HOSTILE)})", SUBTREE)
        assert len(conn.entries) == 1  # the filter-looking value matched itself, nothing more
    finally:
        conn.unbind()
    samba_dc.samba_tool("ou", "delete", f"OU={ou}", "--force-subtree-delete")


@netns
def test_what_samba_enforces_on_names_and_lengths(samba_dc: SambaDC) -> None:
    """Documents the limits ad_data's docstring states (Samba 4.17)."""
    base = samba_dc.base_dn

    def add(names: list[str], **attrs: dict[str, str]) -> str | None:
        try:
            samba_dc.ldif_add(users_ldif(base, names, attrs=attrs))
        except LabCommandError as exc:
            return str(exc.stderr)
        return None

    long_sam = unique_name("s").ljust(21, "x")
    assert add([long_sam]) is None  # > 20 characters: Samba accepts what Windows would refuse
    assert "invalid" in (add([unique_name("c").ljust(65, "x")]) or "")  # cn (and RDN) max 64
    n = unique_name("d")
    assert "invalid" in (add([n], **{n: {"description": "x" * 1025}}) or "")
    assert "invalid '*'" in (add([unique_name("p") + "*"]) or "")


@netns
def test_bulk_load_in_parallel_with_nested_groups(samba_dc: SambaDC) -> None:
    base, ou = samba_dc.base_dn, unique_name("bulk")
    users = [f"{ou}u{i:03d}" for i in range(200)]
    groups = {f"{ou}g{j:02d}": [user_dn(base, u, ou) for u in users[j * 10 : j * 10 + 10]] for j in range(20)}
    for j in range(19):  # a chain of nesting 20 deep
        groups[f"{ou}g{j:02d}"].append(group_dn(base, f"{ou}g{j + 1:02d}", ou))
    ldif = ou_ldif(base, ou) + users_ldif(base, users, ou, disabled=users[:5]) + groups_ldif(base, groups, ou)
    assert ldif.count(BARRIER) == 2 + 20
    result = bulk_load(samba_dc, ldif, parallel=2)
    print(f"bulk: {result.entries} entries in {result.seconds:.2f} s ({result.rate:.0f}/s)")
    assert result.entries == 1 + 200 + 20
    conn = samba_dc.ldap_connection()
    try:
        ou_dn = f"OU={ou},{base}"
        conn.search(ou_dn, "(objectClass=user)", SUBTREE, attributes=["userAccountControl"], paged_size=500)
        assert len(conn.entries) == 200
        assert sum(int(e.userAccountControl.value) & 2 != 0 for e in conn.entries) == 5
        nested = f"(memberOf:1.2.840.113556.1.4.1941:={group_dn(base, f'{ou}g00', ou)})"
        conn.search(ou_dn, f"(&(objectClass=user){nested})", SUBTREE, attributes=["1.1"], paged_size=500)
        assert len(conn.entries) == 200  # every user is in g00 through the chain
    finally:
        conn.unbind()
    with pytest.raises(LabCommandError, match="Already exists"):
        bulk_load(samba_dc, users_ldif(base, users[:4], ou), parallel=2)


@netns
def test_a_joined_dc_replicates_both_ways(samba_dc: SambaDC, samba_dc2: SambaDC) -> None:
    assert samba_dc2.fqdn == "dc2.lab.example" and samba_dc2.ca_file.exists()
    for source, dest in ((samba_dc, samba_dc2), (samba_dc2, samba_dc)):
        user = unique_name("r")
        source.samba_tool("user", "create", user, "--random-password")
        started = time.monotonic()
        dn = user_dn(source.base_dn, user)
        poll(functools.partial(dest.exists, dn), 20, f"{user} on {dest.hostname}")
        print(f"{source.hostname} -> {dest.hostname}: {time.monotonic() - started:.2f} s")
