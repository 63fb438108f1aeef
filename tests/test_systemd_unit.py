"""The systemd unit, its drop-in examples and the install script.

Why these checks: a unit is only exercised by systemd on a real install, so a
typo or a weakened sandbox would otherwise ship unnoticed.  `systemd-analyze
verify` and `security --offline` run here without a running systemd (the
machine's PID 1 need not be systemd); the invariants below pin what the
least-privilege design relies on; install.sh runs into a temporary root.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "userseg.service"
DROP_INS = sorted((SYSTEMD / "examples").glob("*.conf"))
EXPOSURE_TARGET = 2.0

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(*texts: str) -> Unit:
    """Sections -> key -> every value in order (keys repeat in units; drop-ins are later texts).

    An empty assignment resets the list, as systemd does for list settings."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    for text in texts:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            if value.strip():
                unit[section][key.strip()].append(value.strip())
            else:
                unit[section][key.strip()].clear()
    return unit


def words(unit: Unit, section: str, key: str) -> set[str]:
    return {w for value in unit[section][key] for w in value.split()}


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def unit_copy(tmp: Path, name: str = "userseg.service", drop_ins: list[Path] | None = None) -> Path:
    """The unit with /usr/bin/userseg pointing at this checkout's real entry point (verify
    checks that every Exec*= binary exists), plus drop-ins in <name>.d/ next to it."""
    entry = Path(sys.executable).parent / "userseg"
    assert os.access(entry, os.X_OK), f"{entry}: the venv's userseg entry point is missing"
    text = UNIT.read_text()
    assert "/usr/bin/userseg " in text
    path = tmp / name
    path.write_text(text.replace("/usr/bin/userseg ", f"{entry} "))
    if drop_ins:
        (tmp / f"{name}.d").mkdir()
        for conf in drop_ins:
            shutil.copy(conf, tmp / f"{name}.d" / conf.name)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LANG": "C"},
    )


def exposure(unit: Path) -> float:
    proc = analyze("security", "--offline=yes", "--no-pager", str(unit))
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout
    return float(found.group(1))


@needs_analyze
def test_verify_passes_with_and_without_the_drop_ins(tmp_path: Path) -> None:
    for sub, drop_ins in (("plain", []), ("drop-ins", DROP_INS)):
        (tmp_path / sub).mkdir()
        proc = analyze("verify", "--man=no", str(unit_copy(tmp_path / sub, drop_ins=drop_ins)))
        # verify exits 0 on many mistakes (an unparsable value is "ignored"): any output is a finding.
        assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), sub


@needs_analyze
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above is not vacuous: a bad value in a drop-in is reported."""
    bad = tmp_path / "bad.conf"
    bad.write_text("[Service]\nProtectSystem=sometimes\n")
    proc = analyze("verify", "--man=no", str(unit_copy(tmp_path, drop_ins=[bad])))
    assert "ProtectSystem" in proc.stderr or "protect system" in proc.stderr


@needs_analyze
def test_security_exposure_within_target(tmp_path: Path) -> None:
    """Report and bound the exposure score; running as root instead of `userseg` scores worse."""
    (tmp_path / "root").mkdir()
    (tmp_path / "extras").mkdir()
    score = exposure(unit_copy(tmp_path))
    with_extras = exposure(unit_copy(tmp_path / "extras", drop_ins=DROP_INS))
    as_root = unit_copy(tmp_path / "root")
    as_root.write_text(re.sub(r"(?m)^(User|Group)=.*\n", "", as_root.read_text()))
    root_score = exposure(as_root)
    print(f"\nsystemd-analyze security exposure: {score} (both drop-ins {with_extras}; as root {root_score})")
    assert score <= EXPOSURE_TARGET
    assert with_extras <= EXPOSURE_TARGET
    assert root_score > score


def test_least_privilege_invariants() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = "Service"
    assert words(unit, svc, "CapabilityBoundingSet") == {"CAP_NET_ADMIN"}
    assert words(unit, svc, "AmbientCapabilities") == {"CAP_NET_ADMIN"}
    assert one(unit, svc, "User") == "userseg" and one(unit, svc, "Group") == "userseg"
    assert one(unit, svc, "ProtectSystem") == "strict"
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"):
        assert one(unit, svc, key) == "yes", key
    assert words(unit, svc, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert unit[svc]["SystemCallFilter"][0] == "@system-service"
    assert words(unit, svc, "SystemCallFilter") >= {"~@privileged", "@resources"}
    # Nothing writable beyond the service's own directories.
    assert not unit[svc]["ReadWritePaths"] and not unit[svc]["BindPaths"]


def test_service_lifecycle_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = "Service"
    assert one(unit, svc, "Type") == "notify" and one(unit, svc, "NotifyAccess") == "main"
    assert one(unit, svc, "Restart") == "on-failure"
    assert one(unit, svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, svc, "WatchdogSec") and one(unit, svc, "TimeoutStopSec")
    assert not unit[svc]["ExecStartPre"]  # serve migrates (and repairs) the database itself
    # a bad config (2) or missing CAP_NET_ADMIN (78): no restart loop
    assert one(unit, svc, "RestartPreventExitStatus") == "2 78"
    assert one(unit, svc, "ExecStart").startswith("/usr/bin/userseg ")
    # Debian's nftables.service flushes the ruleset: we restart and reload with it.
    for key in ("After", "PartOf", "ReloadPropagatedFrom"):
        assert "nftables.service" in words(unit, "Unit", key), key
    assert words(unit, "Install", "WantedBy") == {"multi-user.target", "nftables.service"}


def test_paths_and_credentials_agree_with_the_rest_of_the_project() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = "Service"
    env = dict(value.split("=", 1) for value in unit[svc]["Environment"])
    assert env["USERSEG_RUN_DIR"] == "/run/" + one(unit, svc, "RuntimeDirectory")
    assert env["USERSEG_CONFIG"].startswith("/etc/" + one(unit, svc, "ConfigurationDirectory") + "/")
    example = (REPO / "config" / "userseg.toml").read_text()
    db = re.search(r'(?m)^url = "sqlite:///(/[^"]+)"', example)
    assert db and db.group(1).startswith("/var/lib/" + one(unit, svc, "StateDirectory") + "/")
    # The credential the unit loads is the one the example config names.
    credential = re.search(r'(?m)^#?password_credential = "([^"]+)"', example)
    assert credential and unit[svc]["LoadCredential"] == [credential.group(1)]
    sysusers = (SYSTEMD / "userseg.sysusers.conf").read_text()
    assert re.search(r'(?m)^u userseg - "[^"]+" /var/lib/userseg\b', sysusers)


def test_drop_ins_add_only_their_one_privilege() -> None:
    base = parse_unit(UNIT.read_text())
    by_name = {conf.name: parse_unit(UNIT.read_text(), conf.read_text()) for conf in DROP_INS}
    assert set(by_name) == {"low-ports.conf", "samba-log.conf"}
    low = by_name["low-ports.conf"]
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert words(low, "Service", key) - words(base, "Service", key) == {"CAP_NET_BIND_SERVICE"}
    samba = by_name["samba-log.conf"]
    assert words(samba, "Service", "SupplementaryGroups") == {"adm"}
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert words(samba, "Service", key) == {"CAP_NET_ADMIN"}


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SYSTEMD / "install.sh"), "--root", str(root), "--no-venv", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ids(root: Path) -> tuple[int, int]:
    """uid and gid of `userseg` in the target root's own account files."""
    passwd = {f[0]: f for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())}
    assert passwd["userseg"][5:7] == ["/var/lib/userseg", "/usr/sbin/nologin"]
    return int(passwd["userseg"][2]), int(passwd["userseg"][3])


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("systemd-sysusers") is None, reason="needs root, sysusers"
)
def test_install_into_a_root_is_complete_and_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    first = install(root)
    assert first.returncode == 0, first.stderr
    uid, gid = ids(root)
    assert uid != 0 and gid != 0
    assert os.readlink(root / "usr/bin/userseg") == "/opt/userseg/venv/bin/userseg"
    for installed, source in (
        ("usr/local/lib/systemd/system/userseg.service", "systemd/userseg.service"),
        ("usr/local/lib/sysusers.d/userseg.conf", "systemd/userseg.sysusers.conf"),
        ("usr/local/lib/tmpfiles.d/userseg.conf", "systemd/userseg.tmpfiles.conf"),
        ("usr/local/share/doc/userseg/systemd/low-ports.conf", "systemd/examples/low-ports.conf"),
        ("usr/local/share/doc/userseg/systemd/samba-log.conf", "systemd/examples/samba-log.conf"),
        ("etc/userseg/userseg.toml", "config/userseg.toml"),
    ):
        assert (root / installed).read_bytes() == (REPO / source).read_bytes(), installed
    assert owner_mode(root / "etc/userseg") == (0, gid, 0o750)
    assert owner_mode(root / "etc/userseg/userseg.toml") == (0, gid, 0o640)
    assert owner_mode(root / "var/lib/userseg") == (uid, gid, 0o750)
    assert owner_mode(root / "etc/credstore") == (0, 0, 0o700)

    # Again, with an edited config: nothing changes, the admin's config survives.
    config = root / "etc/userseg/userseg.toml"
    config.write_text("# edited by the admin\n")
    again = install(root)
    assert again.returncode == 0, again.stderr
    assert ids(root) == (uid, gid)
    assert [
        line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("userseg:")
    ] == [f"userseg:x:{uid}:{gid}:userseg AD user-segmentation gateway:/var/lib/userseg:/usr/sbin/nologin"]
    assert config.read_text() == "# edited by the admin\n"
    assert owner_mode(config) == (0, gid, 0o640)


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh needs root")
def test_install_refuses_to_replace_a_foreign_binary_and_bad_options(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/userseg").write_text("#!/bin/sh\n")  # e.g. a distribution package's
    proc = install(tmp_path)
    assert proc.returncode == 1
    assert "usr/bin/userseg exists and is not a link to /opt/userseg/venv/bin/userseg" in proc.stderr
    assert (tmp_path / "usr/bin/userseg").read_text() == "#!/bin/sh\n"
    assert not (tmp_path / "usr/local").exists()
    venv_into_root = subprocess.run(
        ["bash", str(SYSTEMD / "install.sh"), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert venv_into_root.returncode == 1 and "--root needs --no-venv" in venv_into_root.stderr
    assert install(tmp_path, "--bogus").returncode == 2
