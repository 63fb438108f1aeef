"""Real Samba AD domain controllers inside lab server namespaces, for tests, benchmarks and the demo.

A DC is a lab server without ports (``ServerSpec("dc1", address="198.18.20.10")``)
whose namespace runs ``samba -D``. `provision_dc` makes a new domain there,
`join_dc` adds a second DC of the same domain elsewhere in the lab. Both stop
their DC when the lab closes; `SambaDC.stop` ends the whole process tree.

Why these choices (measured on Samba 4.17, 2 vCPUs):

- Provisioning costs ~10 s, so a provision is cached per domain spec and host name
  and copied (~30 ms, see samba_files). A copy starts in ~1 s once the cache also
  holds the TLS files that the first start generated (~4 s of key generation).
- Clients reach the DC by address and check the certificate against its name:
  Samba's certificate says ``CN=DC1.lab.example`` with no SAN. ldap3 compares
  `valid_names` case-insensitively, so `fqdn` ("dc1.lab.example") works.
- The admin password never appears on a command line: provision gets it on
  stdin (samba-tool runs in-process in the system Python), samba-tool reads it
  from ``PASSWD_FILE`` and ldapadd from ``-y``, both 0600 files in the work dir.
  samba-tool has no ``-A`` authentication-file option in 4.17.
- samba-tool talks ``ldap://`` (SASL with sealing: encrypted, no CA needed);
  ldapadd uses LDAPS with CA validation against the DC's name, which resolves
  through the namespace's /etc/netns hosts file.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from ldap3 import BASE, MODIFY_REPLACE

from userseg.lab import samba_files as sf
from userseg.lab import samba_procs as sp
from userseg.lab.samba_dc import LAB_ADMIN_PASSWORD, DomainSpec, SambaDC
from userseg.lab.samba_files import SambaError
from userseg.lab.topology import Lab

__all__ = [
    "LAB_ADMIN_PASSWORD",
    "DomainSpec",
    "SambaDC",
    "SambaError",
    "cleanup_stale",
    "join_dc",
    "provision_dc",
]

_PROVISION_RUNNER = """
import sys
password = sys.stdin.readline().rstrip("\\n")
from samba.netcmd.main import cmd_sambatool
sys.exit(cmd_sambatool()._run("samba-tool", *sys.argv[1:], "--adminpass=" + password))
"""
cleanup_stale = sp.cleanup_stale
DEFAULT_DOMAIN = DomainSpec()  # frozen, so one shared default is safe


# -- building -------------------------------------------------------------------------------------------
def _new_dc(lab: Lab, server: str, workdir: Path, spec: DomainSpec, hostname: str) -> SambaDC:
    if server not in lab.servers:
        raise SambaError(f"lab {lab.run_id} has no server {server!r}")
    if shutil.which("samba") is None or shutil.which("samba-tool") is None:
        raise SambaError("samba is not installed (apt-get install samba samba-ad-dc winbind)")
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise SambaError(f"work directory {workdir} is not empty")
    (workdir / "etc").mkdir(parents=True, exist_ok=True)
    dc = SambaDC(lab, server, workdir, spec, hostname)
    sf.prepare_run_dirs(workdir)
    sf.write_secret(dc.password_file, spec.admin_password)
    dc.client_conf.write_text(sf.client_conf(workdir, spec.realm, spec.domain))
    return dc


def _provision(dc: SambaDC, target: Path) -> None:
    """samba-tool domain provision in-process in the system Python, the password fed on stdin.

    The base smb.conf is nearly empty so the result does not depend on the host's
    /etc/samba/smb.conf (provision copies its shares and options otherwise).
    """
    spec = dc.domain_spec
    base = dc.workdir / "client" / "provision.conf"
    base.write_text(f"[global]\n\tlog file = {dc.workdir}/log/provision.log\n")
    args = [
        "domain",
        "provision",
        f"--realm={spec.realm}",
        f"--domain={spec.domain}",
        "--server-role=dc",
        "--dns-backend=NONE",
        f"--backend-store={spec.backend_store}",
        f"--targetdir={target}",
        f"--host-name={dc.hostname}",
        "-s",
        str(base),
        "--option=interfaces=lo",
        "--option=bind interfaces only=yes",
    ]
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", _PROVISION_RUNNER, *args],
        input=spec.admin_password + "\n",
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SambaError(f"provision failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _fill(dc: SambaDC, cache: bool) -> Path:
    """Put a provisioned domain into dc.workdir; returns the directory its smb.conf paths name.

    With `cache`, the provision is built once under a lock (parallel runs wait for
    it rather than build it twice) and copied; a template is complete only once
    renamed into place, so a crash mid-provision leaves nothing that looks usable.
    """
    if not cache:
        _provision(dc, dc.workdir)
        return dc.workdir
    spec = dc.domain_spec
    template = sf.template_dir(spec.realm, spec.domain, spec.admin_password, dc.hostname, spec.backend_store)
    with sf.locked(template):
        if not template.is_dir():
            building = template.with_name(f"{template.name}.building")
            shutil.rmtree(building, ignore_errors=True)
            _provision(dc, building)
            conf = building / "etc" / "smb.conf"
            conf.write_text(conf.read_text().replace(str(building), str(template)))
            building.rename(template)
        sf.copy_tree(template, dc.workdir)
    return template


def provision_dc(
    lab: Lab,
    server: str,
    workdir: Path,
    domain: DomainSpec = DEFAULT_DOMAIN,
    *,
    hostname: str = "dc1",
    cache: bool = True,
    timeout: float = 60,
) -> SambaDC:
    """A new domain's first DC on lab server `server`, started; stopped when the lab closes.

    The provision comes from the cache (/var/tmp/userseg-samba-template-<hash>, or
    $USERSEG_SAMBA_TEMPLATES): ~2-3 s in all, against ~15 s for the run that fills
    it. `cache=False` provisions afresh into `workdir`. The server's namespace
    gets /etc/netns files (hosts, resolv.conf; removed on close). Server ports
    the DC uses (88, 135, 389, 445, 464, 636, 3268-9, 49152+) must not be lab
    listener ports.
    """
    dc = _new_dc(lab, server, workdir, domain, hostname)
    dc.krb5_conf.write_text(sf.krb5_conf(domain.realm, [dc.address]))
    lab.on_close(dc.close)
    old_root = _fill(dc, cache)
    dc.smb_conf.write_text(
        sf.dc_conf(dc.smb_conf.read_text(), old_root, dc.workdir, dc.ifname, domain.prefork_children)
    )
    dc.write_hosts({})
    dc.start(timeout)
    if cache:
        sf.save_tls(old_root / "private" / "tls", dc.workdir, lock=old_root)
    return dc


def _replicate(dest: SambaDC, source: SambaDC, deadline: float, *, kcc: bool = False) -> None:
    """`drs replicate` of the domain NC from source to dest, retried until the deadline.

    Right after a start the replication service may not know its partitions yet,
    and dest knows source as a partner only once its KCC has run (`kcc` runs it
    first; it can itself fail while a scheduled KCC run is busy).
    """
    while True:
        if kcc:
            dest.samba_tool("drs", "kcc", dest.fqdn, check=False)
        sync = dest.samba_tool("drs", "replicate", dest.fqdn, source.fqdn, dest.base_dn, check=False)
        if sync.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SambaError(f"replication {source.hostname} -> {dest.hostname} fails: {sync.stderr.strip()}")
        sp.pause(0.2)


def _stamp_arrives(source: SambaDC, dest: SambaDC, deadline: float) -> bool:
    """Write a stamp on source (the description of dest's computer object); wait for dest to have it."""
    dn = f"CN={dest.hostname.upper()},OU=Domain Controllers,{source.base_dn}"
    stamp = f"userseg lab: replicated from {source.hostname} at {time.time():.3f}"
    conn = source.ldap_connection()
    try:
        conn.modify(dn, {"description": [(MODIFY_REPLACE, [stamp])]})
    finally:
        conn.unbind()
    while time.monotonic() < deadline:
        conn = dest.ldap_connection()
        try:
            conn.search(dn, "(objectClass=*)", BASE, attributes=["description"])
            if conn.entries and conn.entries[0].description.value == stamp:
                return True
        finally:
            conn.unbind()
        sp.pause(0.1)
    return False


def join_dc(
    lab: Lab, server: str, workdir: Path, first: SambaDC, *, hostname: str = "dc2", timeout: float = 120
) -> SambaDC:
    """A further DC of `first`'s domain on lab server `server`: joined, started, replicating both ways.

    Replication uses DRS over RPC with Kerberos, so every DC gets the others' host
    and ``<NTDS GUID>._msdcs`` names (hosts files) and a krb5.conf naming KDCs.
    Once settled, a DC tells its partners about a change within a second
    (dreplsrv:notify_interval = 1, default 5 s) and they pull it: measured
    0.1-0.9 s from a write on one DC to a read on the other, both ways, also after
    idle minutes. Settling is what join_dc waits for, so tests never see it: a
    `drs replicate` to the new DC (proves the channel), a KCC run and a `drs
    replicate` on `first` (makes `first` a partner the new DC notifies), then one
    stamped change each way, the first of which arrives only with the new DC's
    start-up pull 15 s after its start (Samba behaviour, measured; forcing that
    pull early does not make `first` notify). ~25 s in all, ~8 s of it the join.
    """
    deadline = time.monotonic() + timeout
    spec = first.domain_spec
    dc = _new_dc(lab, server, workdir, spec, hostname)
    lab.on_close(dc.close)
    dc.krb5_conf.write_text(sf.krb5_conf(spec.realm, [first.address]))
    dc.peers = first.peers
    first.peers.append(dc)
    first.write_hosts(first.ntds_guids())
    argv = ["samba-tool", "domain", "join", spec.dns_domain, "DC", f"--server={first.address}"]
    argv += ["-U", f"{spec.domain}\\Administrator", f"--targetdir={dc.workdir}", "--dns-backend=NONE"]
    argv += [f"--backend-store={spec.backend_store}"]
    argv += ["-s", str(dc.client_conf), f"--option=netbios name={hostname.upper()}"]
    argv += ["--option=interfaces=lo", "--option=bind interfaces only=yes"]
    env = sf.env_with({"PASSWD_FILE": str(dc.password_file), "KRB5_CONFIG": str(dc.krb5_conf)})
    lab.run(dc.ns, argv, env=env, timeout=max(1.0, deadline - time.monotonic()))
    conf = sf.dc_conf(dc.smb_conf.read_text(), dc.workdir, dc.workdir, dc.ifname, spec.prefork_children)
    dc.smb_conf.write_text(conf)
    for peer in dc.peers:
        kdcs = [peer.address, *(p.address for p in dc.peers if p is not peer)]
        peer.krb5_conf.write_text(sf.krb5_conf(spec.realm, kdcs))
    first.write_hosts(first.ntds_guids())
    tls_cache = sf.tls_cache_dir(spec.realm, dc.hostname)
    sf.restore_tls(tls_cache, dc.workdir)
    dc.start(max(1.0, deadline - time.monotonic()))
    sf.save_tls(tls_cache, dc.workdir)
    started = time.monotonic()
    _replicate(dc, first, deadline)
    _replicate(first, dc, deadline, kcc=True)
    # Measured (Samba 4.17): `first` notifies the new DC only once the new DC has done
    # its first periodic pull, 15 s after its start, *after* first's KCC run above;
    # forced pulls do not have that effect. If the nudges took so long that the
    # periodic pull came before them, a restart of the new DC schedules another.
    if not _stamp_arrives(first, dc, min(deadline, started + 25)):
        dc.stop()
        dc.start(max(1.0, deadline - time.monotonic()))
        if not _stamp_arrives(first, dc, deadline):
            raise SambaError(f"changes on {first.hostname} do not reach {dc.hostname}")
    if not _stamp_arrives(dc, first, deadline):
        raise SambaError(f"changes on {dc.hostname} do not reach {first.hostname}")
    return dc
