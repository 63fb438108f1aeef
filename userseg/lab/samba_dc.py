"""One lab Samba DC as an object: names, files, start/stop, and clients (samba-tool, LDIF, ldap3).

Built by userseg.lab.samba (`provision_dc`, `join_dc`), which explains the
choices; this module holds what a running DC offers to tests and benchmarks.
The admin password never appears on a command line: samba-tool reads it from
``PASSWD_FILE`` and ldapadd from ``-y``, both a 0600 file in the work directory
(samba-tool 4.17 has no ``-A`` authentication-file option).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldap3 import BASE, SUBTREE, Connection, Server, Tls

from userseg.lab import samba_files as sf
from userseg.lab import samba_procs as sp
from userseg.lab.registry import start_time
from userseg.lab.samba_files import SambaError
from userseg.lab.topology import Lab, LabCommandError, LabError

LAB_ADMIN_PASSWORD = "Userseg-Lab-Adm1n!"  # throw-away, lab only; meets AD complexity rules
_NO_URL_COMMANDS = {"drs", "ldapcmp", "visualize", "testparm", "processes", "time"}


@dataclass(frozen=True)
class DomainSpec:
    """One lab domain. `prefork_children=1` makes AD change notifications arrive in ~30 ms.

    With Samba's default (4 LDAP workers) a notification waits up to Samba's 5 s
    retry cycle whenever the change lands on another worker than the watcher's.
    `backend_store` is the sam.ldb database: "mdb" (LMDB) adds users ~1.5-2x
    faster than Samba's default "tdb" once the domain holds thousands (measured:
    2,000 users per batch, 12,000 in all: 132 -> 77/s with mdb, 68 -> 44/s with
    tdb; both slow down as the domain grows because every add rewrites index
    records that list all objects of a class).
    """

    realm: str = "LAB.EXAMPLE"
    domain: str = "LAB"
    admin_password: str = LAB_ADMIN_PASSWORD
    prefork_children: int | None = None
    backend_store: str = "mdb"

    @property
    def dns_domain(self) -> str:
        return self.realm.lower()

    @property
    def base_dn(self) -> str:
        return ",".join(f"DC={part}" for part in self.dns_domain.split("."))


@dataclass(eq=False)
class SambaDC:
    """One running (or stopped) DC of a lab; built by `provision_dc` or `join_dc`, not directly."""

    lab: Lab
    server: str
    workdir: Path
    domain_spec: DomainSpec
    hostname: str
    ns: str = field(init=False)
    address: str = field(init=False)
    address6: str | None = field(init=False)
    ifname: str = field(init=False)
    peers: list[SambaDC] = field(init=False, repr=False)  # every DC of the domain in this lab, self included
    _ident: sp.DcIdentity = field(init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def __post_init__(self) -> None:
        host = self.lab.servers[self.server]
        self.ns, self.address, self.address6, self.ifname = host.ns, host.address, host.address6, host.ifname
        self.peers = [self]
        self._ident = sp.DcIdentity(
            f"{self.ns}:{self.workdir}:{secrets.token_hex(4)}", self.ns, sp.ns_id(self.ns)
        )

    # -- names and files ---------------------------------------------------------------------------
    @property
    def realm(self) -> str:
        return self.domain_spec.realm

    @property
    def base_dn(self) -> str:
        return self.domain_spec.base_dn

    @property
    def admin_password(self) -> str:
        return self.domain_spec.admin_password

    @property
    def fqdn(self) -> str:
        """dc1.lab.example; the certificate's CN is DC1.lab.example and name checks ignore case."""
        return f"{self.hostname.lower()}.{self.domain_spec.dns_domain}"

    @property
    def admin_user(self) -> str:
        return f"Administrator@{self.domain_spec.dns_domain}"

    @property
    def url(self) -> str:
        return f"ldaps://{self.address}:636"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "private" / "tls" / "ca.pem"

    @property
    def audit_log(self) -> Path:
        """Every authentication event (KDC, LDAP, SMB) as one JSON object per line."""
        return self.workdir / "log" / "auth_audit.log"

    @property
    def smb_conf(self) -> Path:
        return self.workdir / "etc" / "smb.conf"

    @property
    def krb5_conf(self) -> Path:
        return self.workdir / "etc" / "krb5.conf"

    @property
    def client_conf(self) -> Path:
        """samba-tool's own smb.conf (see samba_files.client_conf)."""
        return self.workdir / "client" / "smb.conf"

    @property
    def password_file(self) -> Path:
        """The admin password, 0600, no newline: for ldapadd -y and samba-tool's PASSWD_FILE."""
        return self.workdir / "client" / "admin.pw"

    @property
    def server_log(self) -> Path:
        """Samba's main log (%m stays literal for the daemon's own processes)."""
        return self.workdir / "log" / "log.%m"

    # -- running -----------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        """Start ``samba -D`` and return once an LDAPS simple bind as the admin succeeds.

        Also waits for the KDC (88) and RPC endpoint mapper (135), so a join or a
        kinit right after start does not race the other services.
        """
        with self._lock:
            if self.is_running():
                return
            deadline = time.monotonic() + timeout
            self._ident.master = None
            if leftovers := sp.dc_processes(self._ident):
                raise SambaError(f"{self.hostname}: processes of a previous start still run: {leftovers}")
            (self.workdir / "run" / "pid" / "samba.pid").unlink(missing_ok=True)
            sp.register(self._ident)
            env = {sp.MARKER_ENV: self._ident.marker, "KRB5_CONFIG": str(self.krb5_conf)}
            start_log = self.workdir / "log" / "samba-start.log"
            try:
                with open(start_log, "ab") as out:  # a file, not a pipe: the daemon inherits it
                    self.lab.run(
                        self.ns,
                        ["samba", "-s", str(self.smb_conf), "-D"],
                        env=sf.env_with(env),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                        text=False,
                    )
                self._wait_ready(deadline)
            except BaseException as exc:
                self.stop()
                if isinstance(exc, LabCommandError):
                    raise SambaError(
                        f"{self.hostname}: samba -D failed ({exc.returncode}): "
                        f"{sf.tail(start_log)}\n{sf.tail(self.server_log)}"
                    ) from None
                raise

    def _wait_ready(self, deadline: float) -> None:
        """Poll (with a deadline) until LDAPS binds and the KDC and RPC ports accept; fail fast on death."""
        pid_file = self.workdir / "run" / "pid" / "samba.pid"
        last = "no pid file yet"
        while True:
            if self._ident.master is None and pid_file.exists():
                with contextlib.suppress(ValueError, IndexError):
                    pid = int(pid_file.read_text().split()[0])
                    self._ident.master = (pid, start_time(pid))
                    sp.register(self._ident)
            if self._ident.master is not None:
                if not self.is_running():
                    raise SambaError(
                        f"{self.hostname}: samba exited during start-up:\n{sf.tail(self.server_log)}"
                    )
                if not self.ca_file.exists():
                    last = "no TLS certificate yet (a first start generates it, ~4 s)"
                else:
                    try:
                        self.ldap_connection().unbind()
                        if all(self._port_open(p) for p in (88, 135)):
                            return
                        last = "KDC or RPC port not open yet"
                    except Exception as exc:  # not up yet: keep polling until the deadline
                        last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise SambaError(f"{self.hostname}: not ready in time ({last}):\n{sf.tail(self.server_log)}")
            sp.pause(
                min(deadline - time.monotonic(), 0.05), self._ident.master[0] if self._ident.master else None
            )

    def _port_open(self, port: int) -> bool:
        def probe() -> bool:
            with socket.socket() as s:
                s.settimeout(1)
                return s.connect_ex((self.address, port)) == 0

        return self.lab.worker(self.ns).call(probe)

    def stop(self, timeout: float = 10) -> None:
        """End every process of this DC (see samba_procs) and wait until port 636 is closed."""
        with self._lock:
            deadline = time.monotonic() + timeout
            if left := sp.end_processes(self._ident, timeout):
                raise SambaError(f"{self.hostname}: processes survived SIGKILL: {left}")
            self._ident.master = None
            while self._port_alive(636):
                if time.monotonic() > deadline:
                    raise SambaError(f"{self.hostname}: port 636 still open after stop")
                sp.pause(0.02)

    def _port_alive(self, port: int) -> bool:
        """Whether anything still accepts on the port.

        False when the lab is closing (its worker threads are no longer handed out;
        every DC process has been seen to exit, so nothing can hold the port) or
        when the namespace is gone.
        """
        if sp.ns_id(self.ns) is None:
            return False
        try:
            return self._port_open(port)
        except LabError:
            return False

    def processes(self) -> list[int]:
        """Pids of every process of this DC still alive (empty after `stop`)."""
        return sp.dc_processes(self._ident)

    def is_running(self) -> bool:
        """The samba master process we started is alive (not merely some pid file)."""
        return self._ident.master_alive()

    def close(self) -> None:
        """Stop, remove the namespace's /etc/netns files and the registry entry (runs on lab close)."""
        try:
            self.stop()
            sp.unregister(self._ident)
        finally:
            sf.remove_netns_etc(self.ns)

    # -- clients -----------------------------------------------------------------------------------
    def ldap_connection(
        self,
        via: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        source_address: str | None = None,
    ) -> Any:
        """A bound LDAPS connection (CA and name validated) from lab host `via` (default: the DC's ns).

        The socket is created on the namespace's worker thread and belongs to that
        namespace for good, so the connection can be used from any thread; do not let
        ldap3 reconnect it (a new socket would be made in the caller's namespace).
        """
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file), valid_names=[self.fqdn])
        server = Server(self.address, port=636, use_ssl=True, tls=tls, get_info=None, connect_timeout=5)

        def bind() -> Any:
            return Connection(
                server,
                user=self.admin_user if user is None else user,
                password=self.admin_password if password is None else password,
                auto_bind=True,
                receive_timeout=30,
                source_address=source_address,
            )

        return self.lab.worker(via or self.ns).call(bind)

    def samba_tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run samba-tool against this DC in its namespace, as the admin, password from PASSWD_FILE.

        ``-H ldap://ADDRESS`` is added unless given or the command names its DC itself
        (drs ...); ``-U`` unless given. Raises LabCommandError (with stderr) when check.
        """
        argv = ["samba-tool", *args, "-s", str(self.client_conf)]
        if (
            not any(a == "-H" or a.startswith(("-H", "--URL")) for a in args)
            and args[:1]
            and (args[0] not in _NO_URL_COMMANDS)
        ):
            argv += ["-H", f"ldap://{self.address}"]
        # "--userou=..." is not a user option: match -U / --username exactly
        if not any(a in ("-U", "--username") or a.startswith(("-U", "--username=")) for a in args):
            argv += ["-U", f"{self.domain_spec.domain}\\Administrator"]
        env = sf.env_with({"PASSWD_FILE": str(self.password_file), "KRB5_CONFIG": str(self.krb5_conf)})
        return self.lab.run(self.ns, argv, env=env, check=check)

    def ldif_command(self, tool: str, ldif_file: Path) -> tuple[list[str], dict[str, str]]:
        """argv and environment to run ldapadd/ldapmodify on an LDIF file against this DC over LDAPS."""
        argv = [
            "ip",
            "netns",
            "exec",
            self.ns,
            tool,
            "-H",
            f"ldaps://{self.fqdn}",
            "-x",
            "-D",
            self.admin_user,
            "-y",
            str(self.password_file),
            "-f",
            str(ldif_file),
        ]
        env = sf.env_with({"LDAPTLS_CACERT": str(self.ca_file), "LDAPTLS_REQCERT": "demand"})
        return argv, env

    def _ldif(self, tool: str, ldif: str) -> None:
        path = sf.mkstemp_in(self.workdir / "bulk", ".ldif")
        try:
            path.write_text(ldif)
            argv, env = self.ldif_command(tool, path)
            proc = subprocess.run(argv, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise LabCommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        finally:
            path.unlink(missing_ok=True)

    def ldif_add(self, ldif: str) -> None:
        """ldapadd the LDIF over LDAPS; raises LabCommandError with ldapadd's message on failure."""
        self._ldif("ldapadd", ldif)

    def ldif_modify(self, ldif: str) -> None:
        self._ldif("ldapmodify", ldif)

    # -- topology ----------------------------------------------------------------------------------
    def ntds_guids(self) -> dict[str, str]:
        """Host name (lower case) -> NTDS Settings objectGUID of every DC of the domain."""
        conn = self.ldap_connection()
        try:
            conn.search(
                f"CN=Sites,CN=Configuration,{self.base_dn}",
                "(objectClass=nTDSDSA)",
                SUBTREE,
                attributes=["objectGUID"],
            )
            out: dict[str, str] = {}
            for entry in conn.response:
                if entry.get("type") != "searchResEntry":
                    continue
                server = entry["dn"].split(",")[1].split("=", 1)[1].lower()
                out[server] = str(uuid.UUID(bytes_le=entry["raw_attributes"]["objectGUID"][0]))
            return out
        finally:
            conn.unbind()

    def write_hosts(self, guids: dict[str, str]) -> None:
        """Give every DC of the domain in this lab the names of all of them (no DNS in the lab)."""
        dns = self.domain_spec.dns_domain
        entries = [(dc.address, f"{dc.fqdn} {dc.hostname.lower()}") for dc in self.peers]
        entries += [
            (dc.address, f"{guids[dc.hostname.lower()]}._msdcs.{dns}")
            for dc in self.peers
            if dc.hostname.lower() in guids
        ]
        for dc in self.peers:
            sf.write_netns_etc(dc.ns, sf.hosts_text(entries))

    def exists(self, dn: str) -> bool:
        """Whether this DC holds the entry (e.g. to wait for replication)."""
        conn = self.ldap_connection()
        try:
            return bool(conn.search(dn, "(objectClass=*)", BASE, attributes=["1.1"]))
        finally:
            conn.unbind()
