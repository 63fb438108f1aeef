"""A gateway lab with a real Samba DC: config writing and a running `userseg enforce` to watch."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

from tests.scenario.cli_helpers import USERSEG, env
from userseg.lab import Lab
from userseg.lab.samba import SambaDC

APP = "198.18.20.30"
CLIENT_IP = "198.18.10.11"
OTHER_IP = "198.18.10.12"


def write_ad_config(
    tmp: Path,
    lab: Lab,
    dcs: list[SambaDC],
    group: str,
    *,
    directory_extra: str = "",
    incremental: float = 3600,
) -> Path:
    """Policy: members of `group` reach APP tcp/443; everything else policed is denied.

    The scheduled incremental sync is an hour away by default, so a test that
    sees a change take effect proves the AD change notification did it.
    """
    password = tmp / "bind.pw"
    password.write_text(dcs[0].admin_password + "\n")
    password.chmod(0o600)
    bundle = tmp / "dc-ca.pem"
    bundle.write_text("".join(dc.ca_file.read_text() for dc in dcs))
    names = ", ".join(f'"{dc.fqdn}"' for dc in dcs)
    servers = ", ".join(f'"{dc.url}"' for dc in dcs)
    infra = ", ".join(f'"{dc.address}"' for dc in dcs)
    cfg = tmp / "userseg.toml"
    cfg.write_text(f"""
[database]
url = "sqlite:///{tmp}/userseg.db"

[gateway]
client_interfaces = ["{lab.client_if}"]
netns = "{lab.gateway_ns}"
resync_interval = 30

[service]
listen = "127.0.0.1:0"
status_interval = 0.2

[[gateway.infrastructure]]
name = "domain-controllers"
destinations = [{infra}]
services = ["ad-dc"]

[directory]
servers = [{servers}]
bind_user = "{dcs[0].admin_user}"
password_file = "{password}"
ca_file = "{bundle}"
server_names = [{names}]
incremental_interval = {incremental}
full_interval = 86400
{directory_extra}

[[applications]]
name = "app"
destinations = ["{APP}"]
services = ["tcp/443"]

[[policies]]
name = "app-users"
subjects = ["group:{group}"]
application = "app"
action = "allow"
""")
    return cfg


class Enforcer:
    """`userseg serve` in the background, its log collected so tests can wait on lines."""

    def __init__(self, cfg: Path) -> None:
        self.proc = subprocess.Popen(
            [*USERSEG, "--config", str(cfg), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env(cfg.parent),
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0) -> int:
        """Index of the first line at or after `start` matching `pattern`; AssertionError on timeout."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if rx.search(self.lines[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


def poll(check: object, timeout: float, interval: float = 0.05) -> float:
    """Call check() until it returns True; returns the seconds it took (AssertionError on timeout)."""
    assert callable(check)
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
