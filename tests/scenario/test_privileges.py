"""Least privilege, for real: the service runs as an unprivileged user holding only CAP_NET_ADMIN.

What systemd/userseg.service promises (User=userseg, CapabilityBoundingSet= and
AmbientCapabilities=CAP_NET_ADMIN, NoNewPrivileges=yes) is reproduced with
setpriv inside the lab's gateway namespace: the real process builds the table,
clients experience its verdicts, root's CLI works beside it without taking its
files away, SIGTERM leaves the table in place, and without the capability it
fails with one clear line instead of a traceback.

The config has no `netns`: the process is started inside the gateway namespace
(entering one needs CAP_SYS_ADMIN, which the service does not have).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import userseg
from tests.scenario.cli_helpers import write_config
from tests.scenario.world import ALICE, BOB, CAROL, FIN, HR
from userseg.lab import Lab, probe_tcp

pytestmark = pytest.mark.netns

# What the unit's ExecStart runs (the one place to change when `serve` replaces `enforce`),
# and the line it prints once the kernel is in step.
SERVICE_ARGS = ("serve",)
READY_LINE = "userseg.serve: ready:"

CAP_NET_ADMIN = 12
ONLY_NET_ADMIN = [
    "--inh-caps=-all,+net_admin",
    "--ambient-caps=-all,+net_admin",
    "--bounding-set=-all,+net_admin",
]
NO_CAPS = ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]


def hidden_trees() -> dict[Path, set[str]]:
    """Directories other users cannot traverse (e.g. /root, 0700) above what the service's
    interpreter needs (the venv, its base interpreter, the package's source), each with the
    names of the entries below it to keep visible.  Empty when everything is reachable."""
    # The package directory itself, not the checkout: a checkout that is 0700 (mktemp -d,
    # a clone under /root) is then hidden too, with only the package and the venv bound back.
    needed = {sys.prefix, sys.base_prefix, str(Path(userseg.__file__).parent)}
    hidden: dict[Path, set[str]] = {}
    for path in (Path(os.path.realpath(p)) for p in needed):
        for parent in reversed(path.parents):
            if parent != Path("/") and not parent.stat().st_mode & 0o001:
                hidden.setdefault(parent, set()).add(path.relative_to(parent).parts[0])
                break
    return hidden


def expose_script(hidden: dict[Path, set[str]], stage: Path) -> str:
    """Shell that hides each such directory behind an empty tmpfs and binds back only the
    entries needed (what ProtectHome=tmpfs plus BindReadOnlyPaths= would do), then execs
    its arguments.  Run under `unshare --mount`: nothing is visible outside the process."""
    steps = []
    for n, (top, keep) in enumerate(sorted(hidden.items())):
        staged = stage / str(n)
        steps += [f"mkdir -p {q(staged)}", f"mount --bind {q(top)} {q(staged)}"]
        steps.append(f"mount -t tmpfs -o mode=0755,size=1m userseg-test {q(top)}")
        for name in sorted(keep):
            steps += [f"mkdir {q(top / name)}", f"mount --bind -o ro {q(staged / name)} {q(top / name)}"]
    return " && ".join([*steps, 'exec "$@"'])


def q(path: Path) -> str:
    return shlex.quote(str(path))


@dataclass
class ServiceUser:
    """A throwaway system account and a layout like the unit's: config root:group 0640,
    state and run directories owned by the account."""

    name: str
    base: Path
    lab: Lab

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def config(self) -> Path:
        return self.base / "etc" / "userseg.toml"

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "USERSEG_RUN_DIR": str(self.run_dir),
            "USERSEG_CONFIG": str(self.config),
        }

    def argv(self, args: tuple[str, ...], caps: list[str] | None, as_root: bool = False) -> list[str]:
        """userseg ARGS in the gateway namespace, as this account with `caps` (or as root).

        The interpreter or the checkout may live below a directory only root can enter
        (/root): see hidden_trees and expose_script."""
        python = Path(sys.executable)
        command = ["ip", "netns", "exec", self.lab.gateway_ns]
        if not as_root:
            command += ["setpriv", f"--reuid={self.name}", f"--regid={self.name}", "--clear-groups"]
            command += [*(caps or []), "--no-new-privs"]
        command += [str(python), "-m", "userseg.cli", *args]
        hidden = hidden_trees()
        if not hidden or as_root:
            return command
        script = expose_script(hidden, self.base / "stage")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]

    def run(
        self, *args: str, caps: list[str] | None = None, as_root: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args, caps, as_root),
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.base,
            timeout=60,
        )

    def check(self, *args: str, as_root: bool = False) -> None:
        proc = self.run(*args, as_root=as_root)
        assert proc.returncode == 0, f"userseg {' '.join(args)}: {proc.stderr}"

    def start(self) -> subprocess.Popen[str]:
        """The service with only CAP_NET_ADMIN; returns once it reports the kernel in step."""
        log = self.base / "service.log"  # a file, not a pipe nobody drains while the service runs
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                self.argv(("--config", str(self.config), *SERVICE_ARGS), ONLY_NET_ADMIN),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=self.env(),
                cwd=self.base,
            )
        deadline = time.monotonic() + 30
        while READY_LINE not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the service's log with a deadline
        if READY_LINE not in log.read_text():
            proc.kill()
            proc.communicate(timeout=10)
            raise AssertionError(f"service did not become ready: {log.read_text()}")
        return proc


@pytest.fixture
def account(lab: Lab) -> Iterator[ServiceUser]:
    name = f"us-priv-{uuid.uuid4().hex[:8]}"
    base = Path(tempfile.mkdtemp(prefix="userseg-priv-"))
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", str(base / "state"),
         "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        os.chmod(base, 0o755)
        user = ServiceUser(name, base, lab)
        (base / "etc").mkdir(mode=0o750)
        shutil.chown(base / "etc", "root", name)
        for directory in (user.state, user.run_dir):
            directory.mkdir(mode=0o750)
            shutil.chown(directory, name, name)
        write_config(base / "etc", lab)  # also writes directory.json next to it
        text = user.config.read_text()
        text = text.replace(f"{base}/etc/userseg.db", f"{user.state}/userseg.db")
        user.config.write_text(text.replace(f'netns = "{lab.gateway_ns}"\n', ""))
        for path in (user.config, base / "etc" / "directory.json"):
            os.chmod(path, 0o640)
            shutil.chown(path, "root", name)
        yield user
    finally:
        lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
        subprocess.run(["userdel", name], capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def capabilities(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
    caps = {key: int(fields[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    return {**caps, "uid": int(fields["Uid"].split()[1]), "NoNewPrivs": int(fields["NoNewPrivs"])}


def owners(directory: Path) -> dict[str, str]:
    return {p.name: p.owner() for p in directory.iterdir()}


def test_service_runs_unprivileged_with_only_net_admin(account: ServiceUser, lab: Lab) -> None:
    cfg = str(account.config)
    # Everything that does not touch the kernel works without any capability.
    account.check("--config", cfg, "db", "upgrade")
    account.check("--config", cfg, "directory", "import", str(account.base / "etc" / "directory.json"))
    account.check("--config", cfg, "map", "add", "alice", ALICE, "--no-apply")
    service = account.start()
    try:
        got = capabilities(service.pid)
        only = 1 << CAP_NET_ADMIN
        assert got == {
            "CapInh": only, "CapPrm": only, "CapEff": only, "CapBnd": only, "CapAmb": only,
            "uid": account.state.stat().st_uid, "NoNewPrivs": 1,
        }  # fmt: skip
        assert "table inet userseg" in lab.run("gateway", ["nft", "list", "tables"]).stdout
        assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"

        # Root's CLI beside the service (applying at once through the shared lock) ...
        account.check("--config", cfg, "map", "add", "bob", BOB, as_root=True)
        assert probe_tcp(lab, "c1", BOB, HR, 443) == "open"
        # ... leaves every file of the database and the run directory with the service's user
        # (SQLite hands journal files it creates as root to the database's owner),
        db_files = owners(account.state)
        assert "userseg.db" in db_files and set(db_files.values()) == {account.name}, db_files
        assert set(owners(account.run_dir).values()) == {account.name}
        # ... so the unprivileged side still writes: a store change is enforced by the service.
        account.check("--config", cfg, "map", "add", "alice", CAROL, "--no-apply")  # a second IP
        deadline = time.monotonic() + 2 + 5  # resync_interval 2 s, plus slack
        while probe_tcp(lab, "c1", CAROL, FIN, 443) != "open" and time.monotonic() < deadline:
            time.sleep(0.1)  # polling the dataplane with a deadline
        assert probe_tcp(lab, "c1", CAROL, FIN, 443) == "open"

        service.send_signal(signal.SIGTERM)
        assert service.wait(15) == 0
        # Stopping leaves the table enforcing (kernel timeouts still expire logins).
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"
        assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
    finally:
        if service.poll() is None:
            service.kill()
        service.communicate(timeout=10)


def test_without_net_admin_it_fails_with_a_clear_error(account: ServiceUser, lab: Lab) -> None:
    cfg = str(account.config)
    account.check("--config", cfg, "db", "upgrade")
    once = account.run("--config", cfg, "reconcile", caps=NO_CAPS)
    assert once.returncode != 0
    assert_one_clear_line(once.stderr)
    # The service either exits with that line or reports it and retries; never a traceback.
    service = subprocess.Popen(
        account.argv(("--config", cfg, *SERVICE_ARGS), NO_CAPS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=account.env(),
        cwd=account.base,
    )
    try:
        code = service.wait(30)  # fails fast: no restart loop can fix a missing capability
    finally:
        if service.poll() is None:
            service.kill()
        _out, err = service.communicate(timeout=10)
    critical = [line for line in err.splitlines() if line.startswith("<2>")]
    print(f"\nwithout CAP_NET_ADMIN: reconcile: {once.stderr.strip()!r}; serve (exit {code}): {critical!r}")
    assert code == 78  # EX_CONFIG, in the unit's RestartPreventExitStatus
    assert len(critical) == 1 and "CAP_NET_ADMIN" in critical[0], err
    assert "Traceback" not in err and READY_LINE not in err
    assert "userseg" not in lab.run("gateway", ["nft", "list", "tables"]).stdout


def assert_one_clear_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("userseg: "), stderr
    assert "CAP_NET_ADMIN" in lines[0] or "not permitted" in lines[0].lower(), lines[0]
