"""Windows events forwarded over syslog and logins pushed over HTTP reach real traffic.

A "forwarder" namespace sends NXLog JSON (TCP, RFC 5424, octet-counted) and
rendered event XML (UDP) built from the published samples with lab values;
a client namespace that is not on the sender allowlist sends a forged logon;
a "VPN concentrator" namespace pushes a login with curl and a bearer token.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.scenario.ad_helpers import APP, CLIENT_IP, Enforcer, poll
from tests.scenario.cli_helpers import userseg
from userseg.lab import Lab, probe_tcp
from userseg.web.tokens import new_token, token_hash

pytestmark = pytest.mark.netns

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "events" / "windows-samples"
C2_IP = "198.18.10.21"
FORWARDER = "dc2"  # 198.18.20.11: the only allowed syslog sender
GATEWAY = "198.18.20.1"
TIMEOUT = 15.0

SEND = r"""
import socket, sys
kind, host, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
msg = b"<86>1 " + b"2026-11-22T08:00:00Z fwd nxlog - - - " + payload
if kind == "udp":
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(msg, (host, port))
else:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"%d %s" % (len(msg), msg))
    s.close()
"""


def nxlog_logon(user: str, addr: str) -> str:
    event = json.loads((SAMPLES / "nxlog" / "4624-logon-type10-rdp.json").read_text())
    now = datetime.now(UTC)
    event.update(
        TargetUserName=user,
        TargetDomainName="LAB",
        IpAddress=addr,
        LogonType=3,
        EventTime=now.strftime("%Y-%m-%d %H:%M:%S"),
        EventReceivedTime=now.strftime("%Y-%m-%d %H:%M:%S"),
    )
    event["@timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps(event)


def xml_logon(user: str, addr: str) -> str:
    text = (SAMPLES / "xml" / "4624-logon-type3-ntlm.xml").read_text().strip()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "00Z"
    return (
        text.replace("2021-12-15T07:16:01.778994300Z", now)
        .replace(">z123<", f">{user}<")
        .replace(">6.67.3.10<", f">{addr}<")
    )


@pytest.fixture
def remote(ad_lab: Lab, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    token = new_token()
    cfg = tmp_path / "userseg.toml"
    cfg.write_text(f"""
[database]
url = "sqlite:///{tmp_path}/userseg.db"
[gateway]
client_interfaces = ["{ad_lab.client_if}"]
netns = "{ad_lab.gateway_ns}"
[[applications]]
name = "app"
destinations = ["{APP}"]
services = ["tcp/443"]
[[policies]]
name = "staff-app"
subjects = ["group:staff"]
application = "app"
action = "allow"
[ingest]
[ingest.api]
listen = "{GATEWAY}:18443"
[[ingest.sources]]
name = "wef-tcp"
type = "syslog"
listen = "tcp://0.0.0.0:16514"
allowed_senders = ["198.18.20.11"]
[[ingest.sources]]
name = "wef-udp"
type = "syslog"
listen = "udp://0.0.0.0:16514"
format = "xml"
allowed_senders = ["198.18.20.11"]
[[ingest.sources]]
name = "vpn"
type = "http"
token_hash = "{token_hash(token)}"
ttl = 600
""")
    directory = tmp_path / "directory.json"
    directory.write_text(
        json.dumps({"users": [{"name": n, "groups": ["staff"]} for n in ("alice", "carol", "dave")]})
    )
    userseg(cfg, "db", "upgrade")
    userseg(cfg, "directory", "import", str(directory))
    try:
        yield cfg, token
    finally:
        ad_lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
        ad_lab.run("gateway", ["conntrack", "-F"], check=False)


def _send(lab: Lab, host: str, kind: str, payload: str) -> None:
    """Send one syslog message from `host` to the gateway address on its side."""
    target = "198.18.10.1" if host.startswith("c") else GATEWAY
    lab.run(host, [sys.executable, "-c", SEND, kind, target, "16514", payload])


def _mappings(cfg: Path) -> dict[str, str]:
    return {r["ip"]: r["user"] for r in json.loads(userseg(cfg, "mappings", "--json").stdout)}


def _counters(cfg: Path, source: str) -> dict[str, int]:
    ingest = json.loads(userseg(cfg, "status", "--json").stdout)["ingest"]
    return dict(ingest.get(source, {}).get("counters", {}))


def test_forwarded_windows_events_map_only_from_allowed_senders(
    ad_lab: Lab, remote: tuple[Path, str]
) -> None:
    cfg, _ = remote
    enforcer = Enforcer(cfg)
    try:
        enforcer.wait_for("login sources started")
        enforcer.wait_for("kernel in step")
        assert probe_tcp(ad_lab, "c1", CLIENT_IP, APP, 443, timeout=0.5) == "refused"
        # A client forging a logon for itself is not on the allowlist: ignored and counted.
        _send(ad_lab, "c1", "tcp", nxlog_logon("alice", CLIENT_IP))
        poll(lambda: _counters(cfg, "wef-tcp").get("not_allowed", 0) >= 1, TIMEOUT)
        assert CLIENT_IP not in _mappings(cfg)
        # The forwarder's NXLog JSON over TCP maps c1, its XML over UDP maps c2.
        _send(ad_lab, FORWARDER, "tcp", nxlog_logon("alice", CLIENT_IP))
        _send(ad_lab, FORWARDER, "udp", xml_logon("carol", C2_IP))
        poll(
            lambda: _mappings(cfg).get(CLIENT_IP) == "alice" and _mappings(cfg).get(C2_IP) == "carol", TIMEOUT
        )
        poll(lambda: probe_tcp(ad_lab, "c1", CLIENT_IP, APP, 443, timeout=0.5) == "open", TIMEOUT)
        assert probe_tcp(ad_lab, "c2", C2_IP, APP, 443, timeout=0.5) == "open"
        why = userseg(cfg, "mappings", "--why", CLIENT_IP).stdout
        assert "wef-tcp" in why and "event 4624" in why and "logon type 3" in why
    finally:
        enforcer.stop()


def test_http_push_login_and_logout_with_a_bearer_token(ad_lab: Lab, remote: tuple[Path, str]) -> None:
    cfg, token = remote
    enforcer = Enforcer(cfg)
    url = f"http://{GATEWAY}:18443/api/v1/events"

    def push(body: dict[str, object], bearer: str) -> str:
        out = ad_lab.run(
            "app",
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {bearer}",
             "-H", "Content-Type: application/json", "--data-binary", json.dumps(body), url],
        )  # fmt: skip
        return out.stdout.strip()

    try:
        enforcer.wait_for("push API on")
        enforcer.wait_for("kernel in step")
        assert push({"user": "LAB\\dave", "ip": C2_IP}, "usp_wrong") == "401"
        assert push({"user": "LAB\\dave", "ip": C2_IP}, token) == "202"
        poll(lambda: _mappings(cfg).get(C2_IP) == "dave", TIMEOUT)
        poll(lambda: probe_tcp(ad_lab, "c2", C2_IP, APP, 443, timeout=0.5) == "open", TIMEOUT)
        rows = json.loads(userseg(cfg, "mappings", "--json").stdout)
        [row] = [r for r in rows if r["ip"] == C2_IP]
        assert row["source"] == "vpn"
        assert push({"user": "dave", "ip": C2_IP, "type": "logout"}, token) == "202"
        poll(lambda: C2_IP not in _mappings(cfg), TIMEOUT)
        poll(lambda: probe_tcp(ad_lab, "c2", C2_IP, APP, 443, timeout=0.5) == "refused", TIMEOUT)
    finally:
        enforcer.stop()
