"""The [service] section: defaults, the ops listen address, and every bad value named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config_ingest import GATEWAY, errors
from userseg.config import load_config
from userseg.config_service import LogFormat, ServiceSettings, split_listen


def load(tmp_path: Path, text: str) -> ServiceSettings:
    path = tmp_path / "userseg.toml"
    path.write_text(GATEWAY + text)
    return load_config(path).service


def test_defaults_without_the_section(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    assert s == ServiceSettings()
    assert (s.ops_host, s.ops_port) == ("127.0.0.1", 9715)  # loopback unless configured otherwise
    assert s.startup_sync_timeout == 20.0 and s.status_interval == 2.0 and s.log_format is LogFormat.TEXT
    assert load(tmp_path, "[service]\n") == ServiceSettings()


def test_every_setting(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        '[service]\nlisten = "198.18.0.1:9100"\nstartup_sync_timeout = 0\nstatus_interval = 0.5\n'
        'log_format = "JSON"\n',
    )
    assert s == ServiceSettings("198.18.0.1", 9100, 0.0, 0.5, LogFormat.JSON)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9715", "127.0.0.1", 9715),
        ("  0.0.0.0:80 ", "0.0.0.0", 80),
        ("[::1]:9715", "::1", 9715),
        ("[::]:0", "::", 0),  # port 0: any free port (tests)
        ("localhost:9715", "localhost", 9715),
        ("", None, 0),  # disabled
        ("   ", None, 0),
    ],
)
def test_listen(tmp_path: Path, listen: str, host: str | None, port: int) -> None:
    s = load(tmp_path, f'[service]\nlisten = "{listen}"\n')
    assert (s.ops_host, s.ops_port) == (host, port)


@pytest.mark.parametrize(
    "listen",
    [
        "nowhere",
        "127.0.0.1",
        "127.0.0.1:",
        ":9715",
        "127.0.0.1:http",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:٣",  # a digit, but not an ASCII one
        "::1",  # would read as host ":" port 1
        "::1:9715",  # IPv6 needs brackets
        "[::1:9715",
        "::1]:9715",
        "[]:9715",
        "[127.0.0.1]:9715",
    ],
)
def test_bad_listen_names_the_key_and_the_value(tmp_path: Path, listen: str) -> None:
    errs = errors(tmp_path, f'[service]\nlisten = "{listen}"\n')
    assert len(errs) == 1 and errs[0].startswith("service.listen: expected HOST:PORT"), errs
    assert repr(listen) in errs[0]


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        ("listen = 9715", "listen", "must be a string"),
        ("startup_sync_timeout = -1", "startup_sync_timeout", "between 0 and 600"),
        ("startup_sync_timeout = 601", "startup_sync_timeout", "between 0 and 600"),
        ('startup_sync_timeout = "20"', "startup_sync_timeout", "must be a number"),
        ("startup_sync_timeout = nan", "startup_sync_timeout", "between 0 and 600"),
        ("status_interval = 0.1", "status_interval", "between 0.2 and 60"),
        ("status_interval = true", "status_interval", "must be a number"),
        ('log_format = "xml"', "log_format", "must be 'text' or 'json'"),
        ("log_format = 1", "log_format", "must be 'text' or 'json'"),
        ("listne = 'x'", "listne", "unknown key"),
    ],
)
def test_every_bad_value_names_its_key(tmp_path: Path, text: str, key: str, what: str) -> None:
    errs = errors(tmp_path, f"[service]\n{text}\n")
    assert len(errs) == 1 and errs[0].startswith(f"service.{key}: ") and what in errs[0], errs


def test_all_bad_values_are_reported_at_once(tmp_path: Path) -> None:
    errs = errors(tmp_path, '[service]\nlisten = "x"\nstatus_interval = 999\nlog_format = "xml"\n')
    assert sorted(e.split(":")[0] for e in errs) == [
        "service.listen",
        "service.log_format",
        "service.status_interval",
    ]


def test_split_listen_directly() -> None:
    assert split_listen("[fe80::1]:9715") == ("fe80::1", 9715)
    assert split_listen("fe80::1:9715") is None
