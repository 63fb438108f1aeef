"""`test-parse`, `ignore-suggestions`, `mappings --why` and `token new` through the real CLI entry point."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from userseg.cli import main
from userseg.model import Mapping, ip
from userseg.store import Store
from userseg.store.ingest import IngestBatch, Sighting
from userseg.web.tokens import TokenBook

DATA = Path(__file__).resolve().parent / "data" / "events"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "userseg.toml"
    path.write_text(f"""
[database]
url = "sqlite:///{tmp_path}/u.db"
[gateway]
client_interfaces = ["br0"]
[ingest]
extra_ignore_users = ["svc-*"]
[[ingest.sources]]
name = "dc1"
type = "samba-log"
""")
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_test_parse_explains_every_line_of_a_real_samba_log(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "audit.log"
    sample.write_bytes(
        b"".join(
            (DATA / "samba" / name).read_bytes()
            for name in (
                "kinit-udp-ok.log",  # two 4624s: the UDP try and the TCP retry
                "kinit-wrong-password.log",
                "kinit-computer-account-ok.log",
            )
        )
        + b"not json at all\n"
    )
    code, out = run(capsys, "--config", str(cfg), "test-parse", "samba", str(sample), "--source", "dc1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("1: event: logon alice@LAB ip=198.18.10.11 event=4624 type=3: maps")
    assert lines[1].startswith("2: duplicate: logon alice@LAB")
    assert "ignored (failure)" in lines[2] and "NT_STATUS_WRONG_PASSWORD" in lines[2]
    assert "ignored (ignored_user)" in lines[3] and "'*$'" in lines[3]
    assert lines[4].startswith("5: rejected:")
    assert (
        lines[-1]
        == "summary: 1 duplicate, 1 event, 1 ignored (failure), 1 ignored (ignored_user), 1 rejected"
    )


def test_test_parse_json_and_syslog_framing(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = (DATA / "samba" / "kinit-tcp-ok.log").read_text().strip()
    sample = tmp_path / "syslog.txt"
    sample.write_text(f"<38>1 2026-11-22T05:36:14Z dc1 samba - - - {payload}\n")
    code, out = run(capsys, "--config", str(cfg), "test-parse", "auto", str(sample), "--syslog", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["summary"] == {"event": 1}
    assert (
        doc["results"][0]["event"]["user"] == "alice" and doc["results"][0]["event"]["ip"] == "198.18.10.11"
    )


def test_test_parse_names_bad_arguments(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(cfg), "test-parse", "yaml", str(tmp_path / "x")]) == 2
    assert "unknown format 'yaml'" in capsys.readouterr().err
    assert main(["--config", str(cfg), "test-parse", "samba", str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["--config", str(cfg), "test-parse", "samba", str(tmp_path / "x"), "--source", "nope"]) == 2
    assert "no source 'nope'" in capsys.readouterr().err


def test_ignore_suggestions_lists_accounts_seen_on_many_ips(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    seen = [("svc-scan", f"198.18.10.{10 + i}", now - timedelta(minutes=i)) for i in range(7)]
    seen += [("alice", "198.18.10.50", now), ("alice", "198.18.10.51", now)]
    batch = IngestBatch(sightings={(u, a): Sighting(u, a, t, t, 1) for u, a, t in seen})
    with Store(f"sqlite:///{cfg.parent}/u.db") as store:
        store.commit_ingest(batch, now)
    code, out = run(capsys, "--config", str(cfg), "ignore-suggestions")
    assert code == 0
    assert "svc-scan" in out and "alice" not in out
    assert 'extra_ignore_users = ["svc-scan"]' in out
    code, out = run(capsys, "--config", str(cfg), "ignore-suggestions", "--min-ips", "2", "--json")
    assert [(r["account"], r["ips"]) for r in json.loads(out)] == [("svc-scan", 7), ("alice", 2)]


def test_mappings_why_shows_provenance_and_what_was_replaced(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    prov = {
        "source": "dc1",
        "event_id": "4624",
        "logon_type": "3",
        "host": "dc1.lab.example",
        "time": now.isoformat(),
        "kind": "logon",
        "service": "Kerberos KDC",
        "replaced": "bob (via dc1, last seen ...)",
    }
    with Store(f"sqlite:///{cfg.parent}/u.db") as store:
        store.put_mapping(
            Mapping(ip("198.18.10.11"), "alice", "dc1", now, now, now + timedelta(hours=1), prov)
        )
    code, out = run(capsys, "--config", str(cfg), "mappings", "--why", "198.18.10.11")
    assert code == 0
    assert "198.18.10.11 -> alice" in out and "event 4624 logon type 3 (Kerberos KDC)" in out
    assert "reported by: dc1.lab.example" in out and "replaced:    bob" in out
    code, out = run(capsys, "--config", str(cfg), "mappings", "--why", "198.18.10.99")
    assert "no active mapping" in out
    assert main(["--config", str(cfg), "mappings", "--why", "not-an-ip"]) == 2


def test_token_new_prints_a_token_whose_hash_authenticates(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--config", str(cfg), "token", "new", "vpn")
    assert code == 0
    token = out.splitlines()[1].strip()
    hash_line = next(line for line in out.splitlines() if "token_hash" in line)
    stored = hash_line.split('"')[1]
    assert token.startswith("usp_") and stored.startswith("sha256:") and token not in hash_line
    assert TokenBook({stored: "vpn"}).lookup(token) == "vpn"
