"""Capture real Samba AD DC auth audit lines for the parser corpus (tests/data/events/samba/).

Run as root from the repository root:

    .venv/bin/python tools/capture_samba_events.py [--out tests/data/events/samba]

It builds a throw-away namespace lab (client c1 with 198.18.10.11/.12 and
2001:db8:10::11/12, DC dc1 at 198.18.20.10 / 2001:db8:20::10) exactly the way
tests/ad_fixtures.py does, provisions a DC from the shared provision cache,
creates one user and one computer account, and performs the client actions
whose audit events a mapper must understand.  For every action it saves the
audit lines that the action produced, byte for byte, as ``<scenario>.log``;
lines the DC writes on its own (start-up, replication of its own account)
land in ``dc-startup.log``.

Why real lines: Samba's JSON differs subtly between services (KDC, NTLM over
SMB, LDAP simple bind, Authorization events) and between address families;
constructing them from the source would only reproduce our reading of it.

Known lab limit (Samba 4.17 here): the DC's smbd fails every SMB session
setup with NT_STATUS_INTERNAL_ERROR *after* authentication, so NTLM SMB
steps are marked optional: their audit lines are real and kept (as
"<step>-client-failed.log"), while Kerberos SMB logs nothing.  The
Authorization event type is covered by LDAP (GSSAPI and simple binds).

Cleanup: the lab (namespaces, the DC's processes, /etc/netns files) is closed
in ``finally`` and on SIGTERM/SIGINT; a crash leaves a registry entry that the
next run's ``Lab.cleanup_stale`` removes.  Passwords are lab-only throw-aways
and are passed through files or stdin, never on a command line.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from userseg.lab import ClientSpec, Lab, LabSpec, ServerSpec
from userseg.lab import samba_files as sf
from userseg.lab.ad_data import ldif_entry, users_ldif
from userseg.lab.samba import DomainSpec, SambaDC, cleanup_stale, provision_dc

USER, USER_PASSWORD = "alice", "Capture-Pa55word!"
COMPUTER, COMPUTER_PASSWORD = "PC1", "Capture-Machine-Pa55!"
WRONG = "Wrong-Pa55word!"
SETTLE = 1.5  # seconds without new lines after an action's expected event: the action is complete


class CaptureError(RuntimeError):
    pass


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks below


class Capture:
    """One lab DC and a client namespace with Kerberos, SMB and LDAP client configuration."""

    def __init__(self, lab: Lab, dc: SambaDC, work: Path) -> None:
        self.lab, self.dc, self.work = lab, dc, work
        self.client_ns = lab.clients["c1"].ns
        self.ccache = work / "ccache"
        self.smb_conf = work / "smb.conf"
        self.smb_conf.write_text(
            "[global]\n\tworkgroup = LAB\n\trealm = LAB.EXAMPLE\n\tclient min protocol = SMB2\n"
            f"\tlock directory = {work}\n\tstate directory = {work}\n\tcache directory = {work}\n"
            f"\tprivate dir = {work}\n\tlog file = {work}/client.log\n"
        )
        self.offset = 0
        self.last_error = ""

    # -- helpers -----------------------------------------------------------------------------------
    def krb5(self, kdc: str, *, tcp: bool = False) -> Path:
        """A client krb5.conf; `tcp` forces TCP (udp_preference_limit = 1), else UDP is tried first."""
        path = self.work / f"krb5-{len(list(self.work.glob('krb5-*')))}.conf"
        udp = "\tudp_preference_limit = 1\n" if tcp else ""
        path.write_text(
            f"[libdefaults]\n{udp}\tdefault_realm = LAB.EXAMPLE\n\tdns_lookup_kdc = false\n"
            "\tdns_lookup_realm = false\n\trdns = false\n\tdns_canonicalize_hostname = false\n"
            f"[realms]\n\tLAB.EXAMPLE = {{\n\t\tkdc = {kdc}\n\t}}\n"
            "[domain_realm]\n\t.lab.example = LAB.EXAMPLE\n\tlab.example = LAB.EXAMPLE\n"
        )
        return path

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, stdin: str = "") -> int:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            input=stdin,
            env=sf.env_with(env or {}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.last_error = (proc.stderr or proc.stdout).strip()[-500:]
        return proc.returncode

    def secret(self, name: str, text: str) -> Path:
        path = self.work / name
        sf.write_secret(path, text)
        return path

    def new_lines(self) -> list[str]:
        data = self.dc.audit_log.read_bytes() if self.dc.audit_log.exists() else b""
        chunk = data[self.offset :]
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete.decode("utf-8").splitlines(keepends=True)

    def collect(self, want: Callable[[list[str]], bool], timeout: float = 15.0) -> list[str]:
        """Lines since the last call, once `want` holds for them and nothing new came for SETTLE s."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while True:
            fresh = self.new_lines()
            now = time.monotonic()
            if fresh:
                lines += fresh
                quiet_since = now
            if want(lines) and now - quiet_since >= SETTLE:
                return lines
            if now > deadline:
                if want(lines):
                    return lines
                raise CaptureError(f"expected audit lines did not appear; got {len(lines)}: {lines[-3:]}")
            time.sleep(0.1)  # polling a file another process appends to, with a deadline

    # -- scenarios ---------------------------------------------------------------------------------
    def kinit(self, principal: str, password: str, kdc: str, *, tcp: bool = True) -> int:
        env = {"KRB5_CONFIG": str(self.krb5(kdc, tcp=tcp)), "KRB5CCNAME": f"FILE:{self.ccache}"}
        return self.run(["kinit", principal], env=env, stdin=password + "\n")

    def smb_ntlm(self, user: str, password: str, address: str) -> int:
        auth = self.secret("smb.auth", f"username = {user}\npassword = {password}\ndomain = LAB\n")
        return self.run(
            ["smbclient", "//dc1/netlogon", "-I", address, "-s", str(self.smb_conf), "-A", str(auth),
             "--use-kerberos=off", "-c", "ls"]
        )  # fmt: skip

    def smb_kerberos(self) -> int:
        env = {"KRB5_CONFIG": str(self.krb5(self.dc.address)), "KRB5CCNAME": f"FILE:{self.ccache}"}
        return self.run(
            ["smbclient", "//dc1.lab.example/netlogon", "-I", self.dc.address, "-s", str(self.smb_conf),
             "--use-kerberos=required", f"--use-krb5-ccache=FILE:{self.ccache}", "-c", "ls"],
            env=env,
        )  # fmt: skip

    def ldap_kerberos(self) -> int:
        env = {"KRB5_CONFIG": str(self.krb5(self.dc.address))}
        return self.run(
            ["samba-tool", "user", "show", USER, "-H", "ldap://dc1.lab.example", "-s", str(self.smb_conf),
             "--use-kerberos=required", f"--use-krb5-ccache=FILE:{self.ccache}"],
            env=env,
        )  # fmt: skip

    def ldap_simple(self, password: str, starttls: bool) -> int:
        pw = self.secret("ldap.pw", password)
        url = "ldap://dc1.lab.example" if starttls else "ldaps://dc1.lab.example"
        # ldapwhoami would be natural, but Samba lacks the WhoAmI extended operation: read the rootDSE
        argv = [
            "ldapsearch",
            "-x",
            "-H",
            url,
            "-D",
            f"{USER}@lab.example",
            "-y",
            str(pw),
            "-s",
            "base",
            "-b",
            "",
        ]
        argv += ["-ZZ"] if starttls else []
        return self.run(argv, env={"LDAPTLS_CACERT": str(self.dc.ca_file), "LDAPTLS_REQCERT": "demand"})


def has(
    event_id: int | None = None, status: str | None = None, kind: str = "Authentication"
) -> Callable[[list[str]], bool]:
    def check(lines: list[str]) -> bool:
        for line in lines:
            if f'"type": "{kind}"' not in line:
                continue
            if event_id is not None and f'"eventId": {event_id}' not in line:
                continue
            if status is not None and f'"status": "{status}"' not in line:
                continue
            return True
        return False

    return check


@dataclass(frozen=True)
class Step:
    """One client action: its exit status must say success (`succeeds`) or failure."""

    name: str
    action: Callable[[], int]
    want: Callable[[list[str]], bool]
    succeeds: bool
    optional: bool = False  # a failure is reported and the step skipped, not fatal


@contextmanager
def lab_with_dc(work: Path) -> Iterator[tuple[Lab, SambaDC]]:
    Lab.cleanup_stale("cap")
    cleanup_stale()
    spec = LabSpec(
        prefix="cap",
        clients=[ClientSpec("c1", ["198.18.10.11", "198.18.10.12"])],
        servers=[ServerSpec("dc1", address="198.18.20.10")],
    )
    lab = Lab(spec)
    client_ns = ""
    try:
        client_ns = lab.clients["c1"].ns
        dc = provision_dc(lab, "dc1", work / "dc1", DomainSpec())
        names = f"{dc.fqdn} dc1"
        entries = [(dc.address, names)] + ([(dc.address6, names)] if dc.address6 else [])
        sf.write_netns_etc(client_ns, sf.hosts_text(entries))
        yield lab, dc
    finally:
        try:
            if client_ns:
                sf.remove_netns_etc(client_ns)
        finally:
            lab.close()


def capture(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="userseg-capture-") as tmp, lab_with_dc(Path(tmp)) as (lab, dc):
        work = Path(tmp) / "client"
        work.mkdir()
        cap = Capture(lab, dc, work)

        def save(name: str, lines: list[str]) -> None:
            counts[name] = len(lines)
            if lines:  # a failed optional step may have logged nothing
                (out / f"{name}.log").write_text("".join(lines))

        save("dc-startup", cap.collect(lambda lines: True, timeout=5))
        base = dc.base_dn
        computer = ldif_entry(
            f"CN={COMPUTER},CN=Computers,{base}",
            {
                "objectClass": "computer",
                "cn": COMPUTER,
                "sAMAccountName": f"{COMPUTER}$",
                "userAccountControl": "4096",  # WORKSTATION_TRUST_ACCOUNT
                "unicodePwd": f'"{COMPUTER_PASSWORD}"'.encode("utf-16-le"),
            },
        )
        dc.ldif_add(users_ldif(base, [USER], password=USER_PASSWORD) + computer)
        save("setup-ldapadd-admin", cap.collect(has(4624)))

        v4, v6 = dc.address, dc.address6
        ok, fail = True, False
        steps: list[Step] = [
            Step("kinit-udp-ok", lambda: cap.kinit(USER, USER_PASSWORD, v4, tcp=False), has(4624), ok),
            Step("kinit-tcp-ok", lambda: cap.kinit(USER, USER_PASSWORD, v4), has(4624), ok),
            Step("kinit-wrong-password", lambda: cap.kinit(USER, WRONG, v4), has(4625), fail),
            Step("kinit-unknown-user", lambda: cap.kinit("nosuchuser", WRONG, v4), has(4625), fail),
            Step(
                "kinit-computer-account-ok",
                lambda: cap.kinit(f"{COMPUTER}$", COMPUTER_PASSWORD, v4),
                has(4624),
                ok,
            ),
            Step("kinit-user-again", lambda: cap.kinit(USER, USER_PASSWORD, v4), has(4624), ok),
            Step("smb-kerberos-ok", cap.smb_kerberos, has(kind="Authorization"), ok, optional=True),
            Step("ldap-gssapi-ok", cap.ldap_kerberos, has(kind="Authorization"), ok, optional=True),
            Step("smb-ntlm-ok", lambda: cap.smb_ntlm(USER, USER_PASSWORD, v4), has(4624), ok, optional=True),
            Step("smb-ntlm-wrong-password", lambda: cap.smb_ntlm(USER, WRONG, v4), has(4625), fail),
            Step("ldap-simple-ldaps-ok", lambda: cap.ldap_simple(USER_PASSWORD, False), has(4624), ok),
            Step("ldap-simple-ldaps-wrong-password", lambda: cap.ldap_simple(WRONG, False), has(4625), fail),
            Step("ldap-simple-starttls-ok", lambda: cap.ldap_simple(USER_PASSWORD, True), has(4624), ok),
        ]
        if v6:
            steps += [
                Step("kinit-ipv6-ok", lambda: cap.kinit(USER, USER_PASSWORD, f"[{v6}]"), has(4624), ok),
                Step(
                    "smb-ntlm-ipv6-ok",
                    lambda: cap.smb_ntlm(USER, USER_PASSWORD, v6),
                    has(4624),
                    ok,
                    optional=True,
                ),
            ]
        for step in steps:
            rc = step.action()
            if (rc == 0) != step.succeeds:
                problem = f"{step.name}: client exit status {rc}: {cap.last_error}"
                if not step.optional:
                    raise CaptureError(problem)
                print(f"optional step failed, its lines are kept: {problem}", file=sys.stderr, flush=True)
                save(f"{step.name}-client-failed", cap.collect(lambda lines: True, timeout=3))
                continue
            save(step.name, cap.collect(step.want))
            print(f"{step.name}: {counts[step.name]} line(s)", flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("tests/data/events/samba"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        counts = capture(args.out)
    except (CaptureError, KeyboardInterrupt) as exc:
        print(f"capture failed: {exc}", file=sys.stderr)
        return 1
    print(f"saved {sum(counts.values())} lines in {len(counts)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
