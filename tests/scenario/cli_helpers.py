"""Running the real `userseg` command against a lab gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from userseg.lab import Lab

USERSEG = [sys.executable, "-m", "userseg.cli"]


def write_config(tmp: Path, lab: Lab, extra: str = "") -> Path:
    cfg = tmp / "userseg.toml"
    cfg.write_text(f"""
[database]
url = "sqlite:///{tmp}/userseg.db"

[gateway]
client_interfaces = ["{lab.client_if}"]
netns = "{lab.gateway_ns}"
resync_interval = 2

[[gateway.infrastructure]]
name = "dc"
destinations = ["198.18.20.53"]
services = ["tcp/88", "tcp/389", "udp/53"]

[[applications]]
name = "fin-web"
destinations = ["198.18.20.10"]
services = ["tcp/80,443"]

[[applications]]
name = "hr-web"
destinations = ["198.18.20.20"]
services = ["tcp/80,443"]

[[policies]]
name = "finance-web"
subjects = ["group:Finance"]
application = "fin-web"
action = "allow"

[[policies]]
name = "hr-web"
subjects = ["group:HR"]
application = "hr-web"
action = "allow"
{extra}
""")
    directory = tmp / "directory.json"
    directory.write_text(
        json.dumps(
            {
                "users": [
                    {"name": "alice", "groups": ["Finance"]},
                    {"name": "bob", "groups": ["HR"]},
                ]
            }
        )
    )
    return cfg


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "USERSEG_RUN_DIR": str(tmp / "run")}


def userseg(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*USERSEG, "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        env=env(cfg.parent),
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"userseg {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc
