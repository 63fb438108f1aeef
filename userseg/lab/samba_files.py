"""Files and processes behind a lab Samba DC: configs, the provision cache, /etc/netns, process trees.

Why a module apart from samba.py: everything here is mechanism that the DC
object only orchestrates, and most of it is pure text (smb.conf, krb5.conf,
hosts) that is easier to read and check on its own.

- **smb.conf**: a provisioned smb.conf points at /var/run/samba and /var/log/samba;
  two DCs on one machine would share pid files, sockets and logs, so every path a
  DC writes is moved under its own work directory (`dc_conf`).
- **Provision cache**: `samba-tool domain provision` costs ~10 s of CPU. Nothing in a
  provisioned directory names its own path except etc/smb.conf (measured: the
  ldb/tdb files hold no absolute path), so a provision is made once per
  (Samba version, realm, domain, password, host name) under /var/tmp and copied
  with ``cp -a`` (xattrs and POSIX ACLs of sysvol included) in ~30 ms. Copies share
  the domain SID, GUIDs and TLS keys, which is harmless for independent labs; a
  second DC of one domain is always a real `samba-tool domain join`.
- **/etc/netns/NS/{hosts,resolv.conf}**: ``ip netns exec`` bind-mounts these over
  /etc for processes in that namespace. The hosts file gives a DC its own and
  its peers' names, including the ``<NTDS GUID>._msdcs.<domain>`` names that DRS
  replication resolves (there is no DNS server in the lab); resolv.conf points at
  127.0.0.1, where nothing listens, so a stray DNS query fails at once instead of
  waiting 5 s for the host's resolver, which is unreachable from the lab.

Processes (stop, stale runs) are in samba_procs.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
TEMPLATE_ROOT_ENV = "USERSEG_SAMBA_TEMPLATES"  # where provision templates are cached (default /var/tmp)
_TEMPLATE_FORMAT = 1  # bump when the template layout or provision options change
_HOSTS_MARK = "# userseg lab DC hosts file"


class SambaError(RuntimeError):
    """A lab DC could not be provisioned, joined, started or stopped."""


# -- configuration text ---------------------------------------------------------------------------------
def client_conf(workdir: Path, realm: str, domain: str) -> str:
    """smb.conf for samba-tool runs: keeps them off /etc/samba/smb.conf, /var/cache and /var/log.

    It is also the base configuration of provision and join, so the DC's smb.conf
    carries no share or option inherited from whatever the host's smb.conf holds.
    """
    scratch = workdir / "client"
    return (
        "[global]\n"
        f"\tworkgroup = {domain}\n\trealm = {realm}\n"
        f"\tlock directory = {scratch}\n\tstate directory = {scratch}\n\tcache directory = {scratch}\n"
        f"\tprivate dir = {scratch}/private\n\tpid directory = {scratch}\n"
        f"\tlog file = {workdir}/log/samba-tool.log\n"
    )


def krb5_conf(realm: str, kdcs: Sequence[str]) -> str:
    """Kerberos for one DC's processes (via KRB5_CONFIG): the lab has no DNS to find KDCs by SRV.

    Without it a joined DC cannot get tickets for DRS replication
    (NT_STATUS_NO_LOGON_SERVERS) and samba-tool falls back to NTLM.
    """
    dns = realm.lower()
    kdc_lines = "".join(f"\tkdc = {k}\n" for k in kdcs)
    return (
        f"[libdefaults]\n\tdefault_realm = {realm}\n\tdns_lookup_realm = false\n\tdns_lookup_kdc = false\n"
        f"\n[realms]\n{realm} = {{\n{kdc_lines}\tdefault_domain = {dns}\n}}\n"
        f"\n[domain_realm]\n\t.{dns} = {realm}\n\t{dns} = {realm}\n"
    )


def dc_conf(
    provisioned: str, old_root: Path, workdir: Path, ifname: str, prefork_children: int | None
) -> str:
    """Rewrite a provisioned smb.conf for a DC living in `workdir` and listening on `ifname`.

    Every directory a running DC writes moves under workdir/run and workdir/log.
    The services stay Samba's default: `dnsupdate` looks useless without a DNS
    backend (its samba_dnsupdate fails and logs a traceback at every start), but
    it also runs samba_spnupdate, which registers the DC's DRS replication SPN;
    without that SPN a joined DC cannot replicate from this one (measured:
    WERR_INVALID_PARAMETER). `dreplsrv:notify_interval = 1` makes a DC tell its
    replication partners about changes within a second (default 5 s).
    """
    run, log = workdir / "run", workdir / "log"
    extra = [
        f"interfaces = lo {ifname}",
        "bind interfaces only = yes",
        f"pid directory = {run}/pid",
        f"ncalrpc dir = {run}/ncalrpc",
        f"winbindd socket directory = {run}/winbindd",
        f"ntp signd socket directory = {run}/ntp_signd",
        f"log file = {log}/log.%m",
        f"log level = 1 auth_json_audit:4@{log}/auth_audit.log",
        "dreplsrv:notify_interval = 1",
    ]
    if prefork_children is not None:
        extra.append(f"prefork children = {prefork_children}")
    ours = {line.split("=", 1)[0].strip() for line in extra}
    out: list[str] = []
    section = ""
    for line in provisioned.replace(str(old_root), str(workdir)).splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.lower()
            out.append(line)
            if section == "[global]":
                out += [f"\t{e}" for e in extra]
            continue
        key = stripped.partition("=")[0]
        key = key.strip().lower()
        if section == "[global]" and key in ours:
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def prepare_run_dirs(workdir: Path) -> None:
    """The runtime directories named in dc_conf; winbindd refuses (and takes samba down) unless 0755."""
    for sub, mode in (("pid", 0o755), ("ncalrpc", 0o755), ("winbindd", 0o755), ("ntp_signd", 0o750)):
        path = workdir / "run" / sub
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    (workdir / "log").mkdir(exist_ok=True)
    (workdir / "client" / "private").mkdir(parents=True, exist_ok=True, mode=0o700)


def write_secret(path: Path, secret: str) -> None:
    """A 0600 file holding only the secret (no newline: ldapadd -y takes the file verbatim)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    path.chmod(0o600)


# -- /etc/netns/NS --------------------------------------------------------------------------------------
def hosts_text(entries: Iterable[tuple[str, str]]) -> str:
    """The host's own /etc/hosts (it names the machine's hostname, which libldap resolves) plus ours."""
    try:
        base = Path("/etc/hosts").read_text()
    except OSError:
        base = "127.0.0.1 localhost\n"
    ours = "".join(f"{addr} {names}\n" for addr, names in entries)
    return f"{_HOSTS_MARK}\n{base.rstrip()}\n{ours}"


def write_netns_etc(ns: str, hosts: str) -> None:
    """Give processes started with `ip netns exec NS` our hosts file and a resolver that fails fast."""
    etc = NETNS_ETC / ns
    etc.mkdir(parents=True, exist_ok=True)
    resolv = "# userseg lab: no DNS here\nnameserver 127.0.0.1\n"
    for name, text in (("hosts", hosts), ("resolv.conf", resolv)):
        # Rewritten in place, never replaced by rename: a running process sees the file
        # through a bind mount of the inode that existed when it was started.
        with open(etc / name, "w") as fh:
            fh.write(text)
        (etc / name).chmod(0o644)


def remove_netns_etc(ns: str) -> None:
    """Remove what write_netns_etc made (only our files; a directory with anything else stays)."""
    etc = NETNS_ETC / ns
    hosts = etc / "hosts"
    with contextlib.suppress(OSError):
        if hosts.read_text().startswith(_HOSTS_MARK):
            for name in ("hosts", "resolv.conf"):
                with contextlib.suppress(FileNotFoundError):
                    (etc / name).unlink()
    with contextlib.suppress(OSError):
        etc.rmdir()


# -- provision cache ------------------------------------------------------------------------------------
def samba_version() -> str:
    return subprocess.run(["samba", "-V"], capture_output=True, text=True, check=True).stdout.strip()


def template_dir(realm: str, domain: str, password: str, hostname: str, backend: str) -> Path:
    """Cache location of a provision with these parameters (the password enters only hashed)."""
    key = json.dumps([_TEMPLATE_FORMAT, samba_version(), realm, domain, password, hostname, backend])
    root = Path(os.environ.get(TEMPLATE_ROOT_ENV, "/var/tmp"))
    return root / f"userseg-samba-template-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` + ".lock": parallel test runs build a template only once."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def copy_tree(src: Path, dst: Path) -> None:
    """cp -a (keeps the sysvol NT ACL xattrs and POSIX ACLs that samba-tool ntacl checks)."""
    dst.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SambaError(f"copying {src} to {dst} failed: {proc.stderr.strip()}")


TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


def tls_cache_dir(realm: str, hostname: str) -> Path:
    """Where a joined DC's TLS files are kept between runs (a join cannot be cached, its keys can)."""
    key = json.dumps([_TEMPLATE_FORMAT, samba_version(), realm, hostname])
    root = Path(os.environ.get(TEMPLATE_ROOT_ENV, "/var/tmp"))
    return root / f"userseg-samba-tls-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def save_tls(cache: Path, workdir: Path, lock: Path | None = None) -> None:
    """Keep the TLS files a first start generated (~4 s of RSA key generation) for later DCs.

    Samba generates them only when absent, so a DC started with cached files uses those.
    """
    src = workdir / "private" / "tls"
    if not all((src / f).exists() for f in TLS_FILES):
        return
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(lock or cache):
        if all((cache / f).exists() for f in TLS_FILES):
            return
        for name in TLS_FILES:
            tmp = cache / f".{name}.tmp"
            shutil.copy2(src / name, tmp)
            tmp.replace(cache / name)


def restore_tls(cache: Path, workdir: Path) -> None:
    """Put cached TLS files into a DC's private/tls before its first start, if there are any."""
    dst = workdir / "private" / "tls"
    with locked(cache) if cache.is_dir() else contextlib.nullcontext():
        if all((cache / f).exists() for f in TLS_FILES):
            dst.mkdir(parents=True, exist_ok=True)
            for name in TLS_FILES:
                shutil.copy2(cache / name, dst / name)


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log file, for error messages that say why a DC did not come up."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def env_with(extra: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def mkstemp_in(directory: Path, suffix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=directory, suffix=suffix)
    os.close(fd)
    return Path(name)
