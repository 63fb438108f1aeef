"""Real logons from a lab client namespace against a lab Samba DC: kinit, SMB/NTLM, LDAP binds.

Used by the scenario tests and the demo: the DC writes genuine Windows-style
logon events (4624/4625 with the client's address) exactly as it would for a
laptop, which is the point of testing ingestion against it.  Passwords travel
on stdin or in 0600 files, never on a command line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from userseg.lab import samba_files as sf
from userseg.lab.samba_dc import SambaDC
from userseg.lab.topology import Lab


class LogonClient:
    """One client host of the lab, able to authenticate to `dc` in several ways."""

    def __init__(self, lab: Lab, host: str, dc: SambaDC, work: Path) -> None:
        self.lab, self.host, self.dc = lab, host, dc
        self.ns = lab.ns_of(host)
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.ccache = work / f"ccache-{host}"
        self.smb_conf = work / f"smb-{host}.conf"
        self.domain = dc.domain_spec.domain
        self.dns_domain = dc.domain_spec.dns_domain
        self.smb_conf.write_text(
            f"[global]\n\tworkgroup = {self.domain}\n\trealm = {dc.realm}\n\tclient min protocol = SMB2\n"
            f"\tlock directory = {work}\n\tstate directory = {work}\n\tcache directory = {work}\n"
            f"\tprivate dir = {work}\n\tlog file = {work}/client-{host}.log\n"
        )
        self.last_error = ""
        self._configs = 0

    def _krb5(self, *, tcp: bool) -> Path:
        self._configs += 1
        path = self.work / f"krb5-{self.host}-{self._configs}.conf"
        udp = "\tudp_preference_limit = 1\n" if tcp else ""
        realm = self.dc.realm
        domain = self.dns_domain
        path.write_text(
            f"[libdefaults]\n{udp}\tdefault_realm = {realm}\n\tdns_lookup_kdc = false\n"
            "\tdns_lookup_realm = false\n\trdns = false\n\tdns_canonicalize_hostname = false\n"
            f"[realms]\n\t{realm} = {{\n\t\tkdc = {self.dc.address}\n\t}}\n"
            f"[domain_realm]\n\t.{domain} = {realm}\n\t{domain} = {realm}\n"
        )
        return path

    def _run(self, argv: list[str], *, env: dict[str, str] | None = None, stdin: str = "") -> bool:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            input=stdin,
            env=sf.env_with(env or {}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.last_error = (proc.stderr or proc.stdout).strip()[-500:]
        return proc.returncode == 0

    def kinit(self, principal: str, password: str, *, tcp: bool = True) -> bool:
        """Kerberos AS exchange (a workstation logon's first step): Samba logs 4624 or 4625."""
        env = {"KRB5_CONFIG": str(self._krb5(tcp=tcp)), "KRB5CCNAME": f"FILE:{self.ccache}"}
        return self._run(["kinit", principal], env=env, stdin=password + "\n")

    def smb_ntlm(self, user: str, password: str) -> bool:
        """NTLM authentication over SMB2 (a share listing): Samba logs 4624/4625 "SMB2" "NTLMSSP".

        Returns smbclient's success; in this lab it can report NT_STATUS_INTERNAL_ERROR
        after a session setup the DC logged as successful, so callers watch the log.
        """
        auth = self.work / f"smb-{self.host}.auth"
        sf.write_secret(auth, f"username = {user}\npassword = {password}\ndomain = {self.domain}\n")
        return self._run(
            ["smbclient", "//dc1/netlogon", "-I", self.dc.address, "-s", str(self.smb_conf), "-A", str(auth),
             "--use-kerberos=off", "-c", "ls"]
        )  # fmt: skip

    def ldap_simple_bind(self, user: str, password: str) -> bool:
        """An LDAPS simple bind (what many applications do): Samba logs 4624/4625, logon type 8."""
        pw = self.work / f"ldap-{self.host}.pw"
        sf.write_secret(pw, password)
        return self._run(
            ["ldapsearch", "-x", "-H", f"ldaps://{self.dc.address}", "-D", f"{user}@{self.dns_domain}",
             "-y", str(pw), "-s", "base", "-b", ""],
            env={"LDAPTLS_CACERT": str(self.dc.ca_file), "LDAPTLS_REQCERT": "allow"},
        )  # fmt: skip
