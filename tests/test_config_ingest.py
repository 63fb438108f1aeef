"""The [ingest] section: defaults, per-source overrides, listeners, tokens, every error reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from userseg.config import ConfigError, load_config
from userseg.config_ingest import FORMAT_NAMES
from userseg.core.ingest_rules import DEFAULT_IGNORE_USERS
from userseg.events.settings import IngestSettings, SourceKind
from userseg.model import AddressRange

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "userseg.toml"
GATEWAY = '[gateway]\nclient_interfaces = ["br0"]\nclient_networks = ["198.18.10.0/24"]\n'
HASH = "sha256:" + "ab" * 32


def load(tmp_path: Path, text: str) -> IngestSettings:
    path = tmp_path / "userseg.toml"
    path.write_text(GATEWAY + text)
    cfg = load_config(path)
    assert cfg.ingest is not None
    return cfg.ingest


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "userseg.toml"
    path.write_text(GATEWAY + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.errors


def test_no_section_means_no_ingestion(tmp_path: Path) -> None:
    path = tmp_path / "userseg.toml"
    path.write_text(GATEWAY)
    assert load_config(path).ingest is None


def test_defaults_and_a_source_of_each_type(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        f"""
[mappings]
default_ttl = 1800
[ingest]
extra_ignore_users = ["svc-*"]
[ingest.api]
listen = "127.0.0.1:8443"
[[ingest.sources]]
name = "dc1"
type = "samba-log"
[[ingest.sources]]
name = "wef"
type = "syslog"
listen = "udp://0.0.0.0:514"
allowed_senders = ["198.18.20.0/24"]
ttl = 600
[[ingest.sources]]
name = "vpn"
type = "http"
token_hash = "{HASH}"
ignore_users = []
client_networks = ["198.18.30.0/24"]
""",
    )
    dc1, wef, vpn = s.sources
    assert (dc1.kind, wef.kind, vpn.kind) == (SourceKind.SAMBA_LOG, SourceKind.SYSLOG, SourceKind.HTTP)
    assert dc1.samba is not None and str(dc1.samba.path) == "/var/log/samba/auth_audit.log"
    assert dc1.samba.start_at_end
    assert dc1.rules.ttl == 1800 and wef.rules.ttl == 600
    assert dc1.rules.ignore_users == (*DEFAULT_IGNORE_USERS, "svc-*")
    assert vpn.rules.ignore_users == ()
    assert dc1.rules.include_networks == (AddressRange.parse("198.18.10.0/24"),)  # the gateway's
    assert vpn.rules.include_networks == (AddressRange.parse("198.18.30.0/24"),)
    assert wef.syslog is not None and wef.syslog.allowed_senders == (AddressRange.parse("198.18.20.0/24"),)
    assert vpn.http is not None and vpn.http.token_hash == HASH
    assert s.api is not None and (s.api.host, s.api.port) == ("127.0.0.1", 8443)
    assert s.rules.for_source("wef") is wef.rules
    assert s.rules.shared_threshold == 3 and s.rules.shared_window == 600


def test_every_mistake_is_reported_with_its_key_path(
    tmp_path: Path,
) -> None:
    found = errors(
        tmp_path,
        """
[ingest]
shared_threshold = 1
ignore_logon_types = [3, "x"]
color = "blue"
[[ingest.sources]]
name = "a"
type = "syslog"
listen = "udp://0.0.0.0"
format = "json"
[[ingest.sources]]
name = "a"
type = "http"
token_hash = "plaintext-token"
[[ingest.sources]]
name = "c"
type = "carrier-pigeon"
[[ingest.sources]]
name = "d"
type = "samba-log"
path = "relative.log"
start = "middle"
[[ingest.sources]]
name = "e"
type = "syslog"
listen = "tls://0.0.0.0:6514"
""",
    )
    text = "\n".join(found)
    for expected in [
        r"ingest\.shared_threshold: must be between 2 and 1000",
        r"ingest\.ignore_logon_types: must be an array of integers",
        r"ingest\.color: unknown key",
        r"ingest\.sources\[0\]\.listen: must look like udp://HOST:PORT",
        r"ingest\.sources\[0\]\.format: must be one of auto, samba",
        r"ingest\.sources\[1\]\.name: duplicate source name 'a'",
        r"ingest\.sources\[1\]\.token_hash: must be 'sha256:'",
        r"ingest\.sources\[2\]\.type: must be one of 'samba-log', 'syslog', 'http'",
        r"ingest\.sources\[3\]\.path: must be an absolute path",
        r"ingest\.sources\[3\]\.start: must be 'end' or 'beginning'",
        r"ingest\.sources\[4\]\.tls_cert: a tls:// listener needs tls_cert and tls_key",
        r"ingest\.api: an http source needs \[ingest\.api\]",
    ]:
        assert re.search(expected, text), f"{expected!r} not in:\n{text}"
    assert "plaintext-token" not in text  # a pasted secret is not echoed back


def test_tls_files_must_exist(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """
[ingest]
[[ingest.sources]]
name = "s"
type = "syslog"
listen = "tls://127.0.0.1:6514"
tls_cert = "/nonexistent/cert.pem"
tls_key = "/nonexistent/key.pem"
""",
    )
    assert any("tls_cert: '/nonexistent/cert.pem' is not a readable file" in e for e in found)


def test_the_example_config_documents_every_format() -> None:
    text = EXAMPLE.read_text()
    for fmt in FORMAT_NAMES:
        assert f'"{fmt}"' in text
    from userseg.events.formats import FORMATS

    assert set(FORMATS) == set(FORMAT_NAMES)


def test_the_directory_bind_account_is_always_ignored(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o600)
    s = load(
        tmp_path,
        f"""
[directory]
servers = ["ldaps://dc1.lab.example"]
bind_user = "LAB\\\\svc-userseg"
password_file = "{secret}"
base_dn = "DC=lab,DC=example"
[ingest]
ignore_users = ["krbtgt"]
[[ingest.sources]]
name = "dc1"
type = "samba-log"
""",
    )
    assert s.sources[0].rules.ignore_users == ("krbtgt", "svc-userseg")
    assert s.rules.default.ignore_users == ("krbtgt", "svc-userseg")


@pytest.mark.parametrize(
    ("bind", "account"),
    [("LAB\\svc", "svc"), ("svc@lab.example", "svc"), ("CN=svc,OU=x,DC=lab", "svc"), ("svc", "svc")],
)
def test_bind_account_forms(bind: str, account: str) -> None:
    from userseg.config_ingest import bind_account

    assert bind_account(bind) == account
