"""Kerberos (SASL GSSAPI) binds: what works with ldap3 against Samba, and the error when it cannot.

ldap3 implements GSSAPI authentication only, without a SASL security layer
(no signing or sealing).  Samba 4.17's default `ldap server require strong
auth = yes` refuses that even inside TLS ("Sign or Seal are required");
`allow_sasl_over_tls` accepts it over LDAPS/StartTLS.  These tests turn
that option on for the second DC (restarted twice; the first DC is left
alone), get a ticket with kinit inside the DC's namespace, and bind with the
process's credential cache.  They need the optional `gssapi` package.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from userseg.adapters.directory import LdapDirectory
from userseg.directory.model import AuthMethod, DirectoryError, TlsMode

from .helpers import directory_for, server_of, settings_for

pytestmark = pytest.mark.netns

STRONG_AUTH = "ldap server require strong auth = allow_sasl_over_tls"


def _krb5_conf(path: Path, dc: Any) -> None:
    realm = str(dc.fqdn).split(".", 1)[1].upper()
    path.write_text(
        f"[libdefaults]\n default_realm = {realm}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n"
        " rdns = false\n dns_canonicalize_hostname = false\n"
        f"[realms]\n {realm} = {{\n  kdc = {dc.address}\n }}\n"
        f"[domain_realm]\n .{realm.lower()} = {realm}\n {realm.lower()} = {realm}\n"
    )


def kinit(dc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ticket for the admin of `dc`'s realm in a private cache, as the process's default."""
    pytest.importorskip("gssapi")
    pytest.importorskip("cryptography")  # ldap3's channel binding over LDAPS
    if shutil.which("kinit") is None:
        pytest.skip("kinit (krb5-user) not installed")
    conf = tmp_path / "krb5.conf"
    _krb5_conf(conf, dc)
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'ccache'}")
    principal = "Administrator@" + str(dc.fqdn).split(".", 1)[1].upper()
    subprocess.run(
        ["ip", "netns", "exec", dc.ns, "kinit", principal],
        input=dc.admin_password + "\n",
        text=True,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def kerberos(samba_dc2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """dc2 accepting SASL over TLS, and a ticket for its admin; the DC's config is restored after."""
    pytest.importorskip("gssapi")
    dc = samba_dc2
    original = dc.smb_conf.read_text()
    dc.smb_conf.write_text(original.replace("[global]\n", f"[global]\n\t{STRONG_AUTH}\n", 1))
    try:
        dc.stop()
        dc.start()
        kinit(dc, tmp_path, monkeypatch)
        yield dc
    finally:
        dc.smb_conf.write_text(original)
        dc.stop()
        dc.start()


def test_gssapi_over_ldaps(kerberos: Any) -> None:
    dc = kerberos
    settings = settings_for(dc, auth=AuthMethod.GSSAPI, bind_user="")
    directory = LdapDirectory(settings, netns=dc.ns)  # no password: the ticket cache is the credential
    try:
        user = directory.read_user("Administrator")
        assert user is not None and user.sam == "Administrator"
    finally:
        directory.close()


def test_gssapi_refused_by_default_samba_says_why(
    samba_dc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kinit(samba_dc, tmp_path, monkeypatch)
    directory = directory_for(samba_dc, auth=AuthMethod.GSSAPI, bind_user="")
    with pytest.raises(DirectoryError) as info:
        directory.read_all()
    msg = str(info.value)
    assert msg.startswith(server_of(samba_dc).url + ": bind refused"), msg
    assert "allow_sasl_over_tls" in msg


def test_gssapi_without_a_ticket_is_a_directory_error(
    samba_dc: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gssapi")
    pytest.importorskip("cryptography")
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'empty'}")
    directory = directory_for(samba_dc, auth=AuthMethod.GSSAPI, bind_user="")
    with pytest.raises(DirectoryError, match=r"^ldaps://"):
        directory.read_all()


def test_gssapi_without_the_package_is_a_clear_error(samba_dc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gssapi", None)  # makes `import gssapi` raise ImportError
    directory = directory_for(samba_dc, server_of(samba_dc, TlsMode.LDAPS), auth=AuthMethod.GSSAPI)
    with pytest.raises(DirectoryError, match="needs the Python package 'gssapi'"):
        directory.read_all()
