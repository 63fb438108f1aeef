"""The demo: a small company in network namespaces with a real Samba AD DC, enforced by userseg.

`sudo bash run.sh demo` runs this.  It builds a gateway namespace between a
client network (alice's and bob's PCs) and a server network (a Samba Active
Directory domain controller, a finance app, an HR app), provisions the domain,
creates users and nested groups with samba-tool, and walks through what an
admin sees: `userseg sync` reads AD, unknown clients reach only the DC, a
real logon (kinit, NTLM) read from the DC's audit log opens exactly the
user's applications, a failed logon maps nothing, and changes made in AD (a group
membership added or removed, an account disabled) reach the kernel within
moments through AD's change notification - cutting open connections on
revocation.  Every step is a real `userseg` or `samba-tool` command and real
packets; nothing is mocked.  `--keep` leaves the lab up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from userseg.lab import ClientSpec, Lab, LabSpec, LongConnection, ServerSpec, probe_tcp
from userseg.lab.ad_data import users_ldif
from userseg.lab.logons import LogonClient
from userseg.lab.samba import DomainSpec, SambaDC, provision_dc

ALICE_PC, BOB_PC = "198.18.10.11", "198.18.10.12"
PASSWORD = "Demo-Pass-2026!"  # lab users only; handed to kinit on stdin, never on a command line
DC, FINANCE, HR = "198.18.20.53", "198.18.20.10", "198.18.20.20"

SPEC = LabSpec(
    clients=[ClientSpec("alice-pc", addresses=[ALICE_PC]), ClientSpec("bob-pc", addresses=[BOB_PC])],
    servers=[
        ServerSpec("dc", address=DC),
        ServerSpec("finance", address=FINANCE, tcp_ports=[443, 8443]),
        ServerSpec("hr", address=HR, tcp_ports=[443]),
    ],
    ipv6=False,
)


def config_text(lab: Lab, workdir: Path, dc: SambaDC) -> str:
    return f"""# demo configuration written by userseg.lab.demo
[database]
url = "sqlite:///{workdir}/userseg.db"

[gateway]
client_interfaces = ["{lab.client_if}"]
netns = "{lab.gateway_ns}"
log_group = 100

[[gateway.infrastructure]]
name = "domain-controller"
destinations = ["{DC}"]
services = ["ad-dc"]

[directory]
servers = ["{dc.url}"]
bind_user = "{dc.admin_user}"
password_file = "{workdir}/bind.pw"
ca_file = "{dc.ca_file}"
server_names = ["{dc.fqdn}"]

[service]
listen = "127.0.0.1:0"   # metrics and health on a free loopback port (shown by `userseg status --json`)

[ingest]
[[ingest.sources]]
name = "dc-audit-log"
type = "samba-log"
path = "{dc.audit_log}"

[[applications]]
name = "finance-app"
destinations = ["{FINANCE}"]
services = ["tcp/443"]

[[applications]]
name = "finance-admin"
destinations = ["{FINANCE}"]
services = ["tcp/8443"]

[[applications]]
name = "hr-portal"
destinations = ["{HR}"]
services = ["tcp/443"]

[[policies]]
name = "finance-staff"
priority = 10
subjects = ["group:Finance"]
application = "finance-app"
action = "allow"

[[policies]]
name = "hr-staff"
priority = 20
subjects = ["group:HR"]
application = "hr-portal"
action = "allow"

[[policies]]
name = "finance-admins"
priority = 30
subjects = ["group:Finance-Admins"]
application = "finance-admin"
action = "allow"
"""


POLICY_ADDED = """
[[policies]]
name = "finance-reads-hr"
priority = 40
subjects = ["group:Finance-Admins"]
application = "hr-portal"
action = "allow"
"""


class Demo:
    def __init__(self, lab: Lab, workdir: Path, dc: SambaDC) -> None:
        self.lab = lab
        self.workdir = workdir
        self.dc = dc
        self.config = workdir / "userseg.toml"
        pw = workdir / "bind.pw"
        pw.write_text(dc.admin_password + "\n")
        pw.chmod(0o600)
        self.config.write_text(config_text(lab, workdir, dc))
        self.env = {**os.environ, "USERSEG_CONFIG": str(self.config), "USERSEG_RUN_DIR": str(workdir / "run")}
        self.service: subprocess.Popen[str] | None = None

    color = sys.stdout.isatty()

    def paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def red(self, text: str) -> str:
        return self.paint("31", text)

    def say(self, text: str) -> None:
        print("\n" + self.paint("1", f"== {text}"), flush=True)

    def userseg(self, *args: str) -> str:
        print(f"$ userseg {shlex.join(args)}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "userseg.cli", *args], env=self.env, capture_output=True, text=True
        )
        output = (proc.stdout + proc.stderr).rstrip()
        if output:
            print("  " + output.replace("\n", "\n  "), flush=True)
        if proc.returncode not in (0, 3):
            raise SystemExit(f"demo: `userseg {' '.join(args)}` failed with exit code {proc.returncode}")
        return proc.stdout

    def samba_tool(self, *args: str) -> None:
        print(f"$ samba-tool {shlex.join(args)}", flush=True)
        out = self.dc.samba_tool(*args).stdout.strip()
        if out:
            print("  " + out.replace("\n", "\n  "), flush=True)

    def start_service(self) -> None:
        print("$ userseg serve &     (what systemd runs: Type=notify, sd_notify READY=1)", flush=True)
        self.service = subprocess.Popen(
            [sys.executable, "-m", "userseg.cli", "serve"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        self._reloaded = threading.Event()

        def relay() -> None:
            assert self.service is not None and self.service.stdout is not None
            for line in self.service.stdout:
                text = line.rstrip()
                if text[:1] == "<" and ">" in text[:4]:
                    text = text[text.index(">") + 1 :]  # the journald priority prefix
                print(self.paint("36", f"  [serve] {text}"), flush=True)
                if "userseg.serve: ready:" in text:
                    ready.set()
                if "config reloaded" in text:
                    self._reloaded.set()

        threading.Thread(target=relay, daemon=True).start()
        if not ready.wait(90):
            raise SystemExit("demo: `userseg serve` did not become ready")

    def stop_service(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(20)
            except subprocess.TimeoutExpired:  # a long revocation sweep in progress; the lab goes anyway
                print("  (userseg serve did not stop within 20 s of SIGTERM; killed)", flush=True)
                self.service.kill()
                self.service.wait(5)

    def ops(self, path: str, grep: str | None = None) -> None:
        status = json.loads(self.userseg_quiet("status", "--json"))["service"]
        host, port = status["ops"]["address"]
        print(f"$ curl -s http://{host}:{port}{path}" + (f" | grep {grep}" if grep else ""), flush=True)
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            body = r.read().decode()
        lines = [ln for ln in body.splitlines() if grep is None or (grep in ln and not ln.startswith("#"))]
        print("  " + "\n  ".join(lines[:14]), flush=True)

    def userseg_quiet(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "userseg.cli", *args], env=self.env, capture_output=True, text=True
        )
        return proc.stdout

    def connects(self, client: str, src: str, dst: str, port: int) -> str:
        """A plain TCP connect: Samba's LDAP sends no greeting line for probe_tcp to read."""
        sock = self.lab.socket(client, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((src, 0))
            sock.settimeout(2.0)
            sock.connect((dst, port))
            return "open"
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "timeout"
        finally:
            sock.close()

    def probe(self, client: str, src: str, dst: str, name: str, port: int) -> str:
        start = time.monotonic()
        if dst == DC:
            result = self.connects(client, src, dst, port)
        else:
            result = probe_tcp(self.lab, client, src, dst, port, timeout=2.0)
        ms = (time.monotonic() - start) * 1000
        mark = {"open": self.paint("32", "OPEN"), "refused": self.red("REFUSED")}.get(result, result.upper())
        print(f"  {client:9} {src:>13} -> {name:8} {dst}:{port:<5} {mark} ({ms:.0f} ms)", flush=True)
        return result

    def matrix(self, who: list[tuple[str, str]]) -> None:
        for client, src in who:
            for name, dst, port in (
                ("dc", DC, 389),
                ("finance", FINANCE, 443),
                ("finance", FINANCE, 8443),
                ("hr", HR, 443),
            ):
                self.probe(client, src, dst, name, port)

    def until(
        self, client: str, src: str, dst: str, port: int, want: str, since: float, after: str = "samba-tool"
    ) -> None:
        deadline = time.monotonic() + 30
        while probe_tcp(self.lab, client, src, dst, port, timeout=0.5) != want:
            if time.monotonic() > deadline:
                print(f"  {self.red(f'{dst}:{port} not {want} after 30 s')}")
                return
        print(f"  {dst}:{port} is {want} {(time.monotonic() - since) * 1000:.0f} ms after {after} returned")

    def logon(self, what: str, ok: bool) -> None:
        print(f"$ {what}", flush=True)
        print(
            f"  {'ok' if ok else 'failed (as intended)' if 'wrong' in what else self.red('failed')}",
            flush=True,
        )

    def directory(self) -> None:
        self.say(f"Active Directory: Samba DC {self.dc.fqdn} at {DC}; users and nested groups via samba-tool")
        print("$ ldapadd (over LDAPS): users alice and bob with their passwords", flush=True)
        self.dc.ldif_add(users_ldif(self.dc.base_dn, ["alice", "bob"], password=PASSWORD))
        for group in ("Finance", "Accounts-Payable", "HR", "Finance-Admins"):
            self.samba_tool("group", "add", group)
        self.samba_tool("group", "addmembers", "Finance", "Accounts-Payable")
        self.samba_tool("group", "addmembers", "Accounts-Payable", "alice")
        self.samba_tool("group", "addmembers", "HR", "bob")

    def run(self) -> None:
        everyone = [("alice-pc", ALICE_PC), ("bob-pc", BOB_PC)]
        self.say(
            f"Lab up in {self.lab.build_seconds:.2f} s: gateway namespace {self.lab.gateway_ns}, "
            f"clients on {self.lab.client_network}, servers on {self.lab.server_network}"
        )
        self.directory()
        self.say("userseg reads the directory: alice is in Finance through Accounts-Payable (nested)")
        self.userseg("check-config")
        self.userseg("db", "upgrade")
        self.userseg("sync", "--full")
        self.userseg("groups")
        self.say("The service starts: first directory sync, kernel read back and reconciled, then READY")
        self.start_service()
        self.say("Nobody logged on: unknown clients reach only the domain controller")
        self.matrix(everyone)

        self.say("Alice logs on to her PC (Kerberos); the DC's audit log says so; userseg maps her")
        alice = LogonClient(self.lab, "alice-pc", self.dc, self.workdir / "alice-pc")
        bob = LogonClient(self.lab, "bob-pc", self.dc, self.workdir / "bob-pc")
        start = time.monotonic()
        self.logon(
            f"kinit alice@{self.dc.realm}   (on alice-pc)", alice.kinit(f"alice@{self.dc.realm}", PASSWORD)
        )
        self.until("alice-pc", ALICE_PC, FINANCE, 443, "open", start, "kinit")
        self.userseg("mappings", "--why", ALICE_PC)
        self.say("Someone tries bob's account with a wrong password: failed logons never map")
        self.logon("kinit bob (wrong password, on bob-pc)", bob.kinit(f"bob@{self.dc.realm}", "wrong"))
        self.say("Bob logs on over NTLM (an SMB share): mapped the same way")
        start = time.monotonic()
        bob.smb_ntlm("bob", PASSWORD)
        print("$ smbclient //dc1/netlogon -U bob   (on bob-pc)", flush=True)
        self.until("bob-pc", BOB_PC, HR, 443, "open", start, "smbclient")
        self.matrix(everyone)
        self.userseg("mappings")
        self.userseg("users", "alice")
        self.userseg("simulate", "alice", f"{HR}:443")

        self.say("In AD, alice joins Finance-Admins: the admin app opens, no sync command needed")
        self.samba_tool("group", "addmembers", "Finance-Admins", "alice")
        start = time.monotonic()
        self.until("alice-pc", ALICE_PC, FINANCE, 8443, "open", start)

        self.say("Alice has the finance app open; in AD she leaves Accounts-Payable")
        conn = LongConnection(self.lab, "alice-pc", ALICE_PC, FINANCE, 443)
        conn.wait_pings(3, 2.0)
        print(f"  alice's connection to the finance app is alive: {conn.alive()}")
        start = time.monotonic()
        self.samba_tool("group", "removemembers", "Accounts-Payable", "alice")
        died = conn.wait_dead(30.0, since=start)
        if died is None:
            print(f"  {self.red('alice' + chr(39) + 's connection survived the revocation')}")
        else:
            print(f"  alice's open connection was cut {died * 1000:.0f} ms after samba-tool started")
        conn.close()
        self.matrix([("alice-pc", ALICE_PC)])

        self.say("In AD, bob's account is disabled: his mapping goes and he is an unknown client again")
        self.samba_tool("user", "disable", "bob")
        start = time.monotonic()
        self.until("bob-pc", BOB_PC, HR, 443, "refused", start)
        self.userseg("mappings")

        self.say("The admin adds a policy to the config and reloads (systemctl reload userseg = SIGHUP)")
        with self.config.open("a") as f:
            f.write(POLICY_ADDED)
        assert self.service is not None
        self.service.send_signal(signal.SIGHUP)
        self._reloaded.wait(30)
        start = time.monotonic()
        self.until("alice-pc", ALICE_PC, HR, 443, "open", start, "the reload")

        self.say("State of the gateway: health, readiness and Prometheus metrics")
        self.userseg("status")
        self.ops("/readyz")
        self.ops("/metrics", "userseg_")
        table = self.lab.run("gateway", ["nft", "list", "chain", "inet", "userseg", "police"]).stdout
        print("$ nft list chain inet userseg police\n  " + table.strip().replace("\n", "\n  "))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--keep", action="store_true", help="leave the lab running until Ctrl-C")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: run as root (network namespaces and nftables need it)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="userseg-demo-") as tmp, Lab(SPEC) as lab:
        print("Provisioning the Samba AD domain LAB.EXAMPLE (first run ~10 s, then cached) ...", flush=True)
        dc = provision_dc(lab, "dc", Path(tmp) / "dc", DomainSpec(), hostname="dc1")
        demo = Demo(lab, Path(tmp), dc)
        try:
            demo.run()
        except BaseException:
            demo.stop_service()
            raise
        if args.keep:
            print(
                f"\nLab kept. Try: USERSEG_CONFIG={demo.config} .venv/bin/userseg mappings\n"
                f"     or: ip netns exec {lab.clients['alice-pc'].ns} curl -sk https://{FINANCE}/  "
                "(the listener answers with a greeting line)\nCtrl-C tears everything down."
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        demo.stop_service()
    print("\nDemo finished; lab torn down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
