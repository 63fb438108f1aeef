"""The demo: a small company in network namespaces, enforced by userseg, driven by its CLI.

`sudo bash run.sh demo` runs this.  It builds a gateway namespace between a
client network (alice's and bob's PCs) and a server network (a domain
controller, a finance app, an HR app), then walks through what an admin sees:
unknown clients reach only the DC, a logon opens exactly the user's
applications, `simulate` explains verdicts, and removing alice from Finance in
the directory cuts her open connection.  Every step is a real `userseg`
command and real packets; nothing is mocked.  `--keep` leaves the lab up for
exploring until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from userseg.lab import ClientSpec, Lab, LabSpec, LongConnection, ServerSpec, probe_tcp

ALICE_PC, BOB_PC = "198.18.10.11", "198.18.10.12"
DC, FINANCE, HR = "198.18.20.53", "198.18.20.10", "198.18.20.20"

SPEC = LabSpec(
    clients=[ClientSpec("alice-pc", addresses=[ALICE_PC]), ClientSpec("bob-pc", addresses=[BOB_PC])],
    servers=[
        ServerSpec("dc", address=DC, tcp_ports=[88, 389, 445], udp_ports=[53]),
        ServerSpec("finance", address=FINANCE, tcp_ports=[443, 8443]),
        ServerSpec("hr", address=HR, tcp_ports=[443]),
    ],
    ipv6=False,
)


def config_text(lab: Lab, workdir: Path) -> str:
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


class Demo:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.config = workdir / "userseg.toml"
        self.config.write_text(config_text(lab, workdir))
        self.env = {**os.environ, "USERSEG_CONFIG": str(self.config), "USERSEG_RUN_DIR": str(workdir / "run")}

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

    def directory(self, alice_groups: list[str]) -> None:
        path = self.workdir / "directory.json"
        path.write_text(
            json.dumps(
                {
                    "users": [
                        {"name": "alice", "display_name": "Alice Accountant", "groups": alice_groups},
                        {"name": "bob", "display_name": "Bob from HR", "groups": ["HR"]},
                    ]
                }
            )
        )
        self.userseg("directory", "import", str(path))

    def probe(self, client: str, src: str, dst: str, name: str, port: int) -> str:
        start = time.monotonic()
        result = probe_tcp(self.lab, client, src, dst, port, timeout=2.0)
        ms = (time.monotonic() - start) * 1000
        mark = {"open": self.paint("32", "OPEN"), "refused": self.red("REFUSED")}.get(result, result.upper())
        print(f"  {client:9} {src:>13} -> {name:8} {dst}:{port:<5} {mark} ({ms:.0f} ms)", flush=True)
        return result

    def matrix(self, who: list[tuple[str, str]]) -> None:
        for client, src in who:
            for name, dst, port in (
                ("dc", DC, 88),
                ("finance", FINANCE, 443),
                ("finance", FINANCE, 8443),
                ("hr", HR, 443),
            ):
                self.probe(client, src, dst, name, port)

    def run(self) -> None:
        everyone = [("alice-pc", ALICE_PC), ("bob-pc", BOB_PC)]
        self.say(
            f"Lab up in {self.lab.build_seconds:.2f} s: gateway namespace {self.lab.gateway_ns}, "
            f"clients on {self.lab.client_network}, servers on {self.lab.server_network}"
        )
        self.userseg("check-config")
        self.userseg("db", "upgrade")
        self.directory(["Finance"])
        self.say("Enforcement on, nobody logged on: unknown clients reach only the domain controller")
        self.userseg("reconcile")
        self.matrix(everyone)

        self.say("Alice logs on at her PC (here by hand; AD logon events feed this in production)")
        self.userseg("map", "add", "alice", ALICE_PC)
        self.matrix([("alice-pc", ALICE_PC)])
        self.userseg("simulate", "alice", f"{HR}:443")
        self.userseg("simulate", ALICE_PC, f"{FINANCE}:443/tcp")

        self.say("Bob logs on too")
        self.userseg("map", "add", "bob", BOB_PC)
        self.matrix([("bob-pc", BOB_PC)])
        self.userseg("mappings")

        self.say("Alice has the finance app open; then she is removed from Finance in the directory")
        conn = LongConnection(self.lab, "alice-pc", ALICE_PC, FINANCE, 443)
        conn.wait_pings(3, 2.0)
        print(f"  alice's connection to the finance app is alive: {conn.alive()}")
        self.directory([])
        start = time.monotonic()
        self.userseg("reconcile")
        died = conn.wait_dead(3.0, since=start)
        if died is None:
            print(f"  {self.red('alice' + chr(39) + 's connection survived the revocation')}")
        else:
            print(
                f"  alice's open connection was cut {died * 1000:.0f} ms after `userseg reconcile` started "
                "(including the command's own start-up)"
            )
        conn.close()
        self.matrix([("alice-pc", ALICE_PC)])

        self.say("State of the gateway")
        self.userseg("status")
        self.userseg("reconcile", "--dry-run")
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
        demo = Demo(lab, Path(tmp))
        demo.run()
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
    print("\nDemo finished; lab torn down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
