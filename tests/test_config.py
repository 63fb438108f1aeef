"""Config loading: the shipped example, defaults, presets, and error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from userseg.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    default_config_path,
    load_config,
    parse_config,
)
from userseg.model import (
    Action,
    AddressRange,
    DenyMode,
    Mode,
    Service,
    Subject,
    SubjectKind,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "userseg.toml"


def _load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "userseg.toml"
    path.write_text(text)
    return load_config(path)


def _errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, text)
    return info.value.errors


MINIMAL = '[gateway]\nclient_interfaces = ["br0"]\n'


# --- the shipped example -------------------------------------------------------


def test_example_config_loads_with_expected_content() -> None:
    cfg = load_config(EXAMPLE)

    assert cfg.source == str(EXAMPLE)
    assert cfg.database_url == "sqlite:////var/lib/userseg/userseg.db"
    gw = cfg.gateway
    assert gw.client_interfaces == ("br-clients",)
    assert gw.client_networks == (
        AddressRange.parse("198.18.10.0/24"),
        AddressRange.parse("2001:db8:10::/64"),
    )
    assert gw.deny_mode is DenyMode.REJECT
    assert gw.log_group == 100
    assert gw.log_rate_per_second == 50
    assert cfg.netns is None
    assert cfg.resync_interval == 30.0
    assert cfg.default_ttl == 2700
    assert cfg.default_action is Action.DENY

    dcs = gw.infrastructure[0]
    assert dcs.name == "domain-controllers"
    assert dcs.origin == "config"
    assert Service.parse("tcp/88") in dcs.services
    assert Service.parse("tcp/3268-3269") in dcs.services
    assert len(dcs.services) == 13

    assert [a.name for a in cfg.applications] == ["finance-app", "hr-portal"]
    assert all(a.origin == "config" for a in cfg.applications)
    finance = cfg.applications[0]
    assert finance.destinations == (
        AddressRange.parse("198.18.20.0/28"),
        AddressRange.parse("198.18.21.5-198.18.21.9"),
    )
    assert finance.labels == frozenset({"finance"})

    by_name = {p.name: p for p in cfg.policies}
    assert set(by_name) == {"contractors-no-finance", "finance-users", "hr-portal-everyone"}
    assert all(p.origin == "config" for p in cfg.policies)
    assert by_name["contractors-no-finance"].action is Action.DENY
    assert by_name["hr-portal-everyone"].mode is Mode.STAGE
    assert by_name["finance-users"].subjects == (
        Subject(SubjectKind.GROUP, "finance"),
        Subject(SubjectKind.USER, "alice"),
    )
    # every policy names an application the example declares
    assert {p.application for p in cfg.policies} <= {a.name for a in cfg.applications}


# --- defaults ----------------------------------------------------------------------


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = _load_text(tmp_path, MINIMAL)

    assert cfg.database_url == "sqlite:////var/lib/userseg/userseg.db"
    assert cfg.gateway.client_interfaces == ("br0",)
    assert cfg.gateway.client_networks == ()
    assert cfg.gateway.infrastructure == ()
    assert cfg.gateway.deny_mode is DenyMode.REJECT
    assert cfg.gateway.log_group == 100
    assert cfg.gateway.log_rate_per_second == 50
    assert cfg.netns is None
    assert cfg.resync_interval == 30.0
    assert cfg.default_ttl == 2700
    assert cfg.default_action is None  # the store setting decides
    assert cfg.applications == ()
    assert cfg.policies == ()


def test_explicit_values_and_log_group_zero(tmp_path: Path) -> None:
    cfg = _load_text(
        tmp_path,
        """
[database]
url = "postgresql+psycopg://u:p@db/userseg"
[gateway]
client_networks = ["10.0.0.0/8"]
deny_mode = "drop"
log_group = 0
log_rate = 7
netns = "gw"
resync_interval = 2.5
[mappings]
default_ttl = 60
[policy]
default_action = "allow"
""",
    )
    assert cfg.database_url == "postgresql+psycopg://u:p@db/userseg"
    assert cfg.gateway.client_interfaces == ()
    assert cfg.gateway.deny_mode is DenyMode.DROP
    assert cfg.gateway.log_group is None
    assert cfg.gateway.log_rate_per_second == 7
    assert cfg.netns == "gw"
    assert cfg.resync_interval == 2.5
    assert cfg.default_ttl == 60
    assert cfg.default_action is Action.ALLOW


def test_policy_priority_defaults_to_position(tmp_path: Path) -> None:
    cfg = _load_text(
        tmp_path,
        MINIMAL
        + """
[[policies]]
name = "a"
subjects = ["unknown"]
application = "x"
action = "deny"
[[policies]]
name = "b"
priority = 5
subjects = ["any-authenticated"]
application = "x"
action = "allow"
enabled = false
[[policies]]
name = "c"
subjects = ["USER:Bob"]
application = "x"
action = "allow"
""",
    )
    assert [(p.name, p.priority) for p in cfg.policies] == [("a", 10), ("b", 5), ("c", 30)]
    assert cfg.policies[1].enabled is False
    assert cfg.policies[2].subjects == (Subject(SubjectKind.USER, "bob"),)


def test_service_presets_expand_and_deduplicate(tmp_path: Path) -> None:
    cfg = _load_text(
        tmp_path,
        MINIMAL
        + """
[[gateway.infrastructure]]
name = "core"
destinations = ["10.0.0.1"]
services = ["DNS", "dhcp", "udp/53", "tcp/443"]
[[applications]]
name = "dc-tools"
destinations = ["10.0.0.2"]
services = ["ad-dc"]
""",
    )
    core = cfg.gateway.infrastructure[0]
    assert core.services == tuple(Service.parse(s) for s in ("tcp/53", "udp/53", "udp/67", "tcp/443"))
    ad_dc = (
        "tcp/53 udp/53 tcp/88 udp/88 udp/123 tcp/135 tcp/389 udp/389 "
        "tcp/445 tcp/464 udp/464 tcp/636 tcp/3268-3269"
    )
    assert cfg.applications[0].services == tuple(Service.parse(s) for s in ad_dc.split())


# --- errors ------------------------------------------------------------------------


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """
[database]
url = 5

[gateway]
client_interfaces = ["br0", "this-name-is-far-too-long", 3]
client_networks = ["10.0.0.0/24", "10.0.0.300"]
deny_mode = "bounce"
log_group = 70000
log_rate = true
netns = "a/b"
resync_interval = 0

[[gateway.infrastructure]]
name = "dc"
destinations = []
services = ["tcp/99999"]

[mappings]
default_ttl = 10

[policy]
default_action = "maybe"

[[applications]]
name = "bad name!"
destinations = ["10.1.0.0/16"]
services = ["gre"]

[[applications]]
name = "dup"
destinations = ["10.2.0.1-10.1.0.1"]
services = ["tcp/443"]

[[applications]]
name = "dup"
destinations = ["10.3.0.1"]
services = []
labels = "finance"

[[policies]]
name = "p1"
subjects = ["group:"]
application = "dup"
action = "allow"
mode = "audit"

[[policies]]
name = "p2"
priority = "high"
subjects = []
action = "permit"
enabled = "yes"
""",
    )
    expected = [
        "database.url: must be a string, got integer 5",
        "gateway.client_interfaces[1]: bad interface name 'this-name-is-far-too-long' "
        "(1-15 characters of A-Z a-z 0-9 _ . : @ -)",
        "gateway.client_interfaces[2]: must be a string, got integer 3",
        "gateway.client_networks[1]: bad address, CIDR or range '10.0.0.300': "
        "'10.0.0.300' does not appear to be an IPv4 or IPv6 address",
        "gateway.deny_mode: must be 'reject' or 'drop', got 'bounce'",
        "gateway.log_group: must be between 0 and 65535, got 70000",
        "gateway.log_rate: must be an integer, got boolean True",
        "gateway.netns: bad network namespace name 'a/b' (a name under /run/netns, no '/')",
        "gateway.resync_interval: must be between 1 and 86400, got 0",
        "gateway.infrastructure[0].destinations: must not be empty",
        "gateway.infrastructure[0].services[0]: port range 99999-99999 is not within 0-65535 in order",
        "mappings.default_ttl: must be between 60 and 604800, got 10",
        "policy.default_action: must be 'allow' or 'deny', got 'maybe'",
        "applications[0].name: bad name 'bad name!' (use 1-64 characters of A-Z a-z 0-9 _ . -)",
        "applications[0].services[0]: bad protocol in service 'gre' (expected tcp, udp or icmp)",
        "applications[1].destinations[0]: address range '10.2.0.1-10.1.0.1' ends before it starts",
        "applications[2].name: duplicate application name 'dup' (also applications[1])",
        "applications[2].services: must not be empty",
        "applications[2].labels: must be an array of strings, got 'finance'",
        "policies[0].subjects[0]: subject 'group:' needs a name, e.g. group:NAME",
        "policies[0].mode: must be 'enforce' or 'stage', got 'audit'",
        "policies[1].priority: must be an integer, got 'high'",
        "policies[1].subjects: must not be empty",
        "policies[1].application: missing required key",
        "policies[1].action: must be 'allow' or 'deny', got 'permit'",
        "policies[1].enabled: must be true or false, got 'yes'",
    ]
    for message in expected:
        assert message in errors, f"missing {message!r} in {errors}"
    assert len(errors) == len(expected), errors


def test_error_message_names_the_file_and_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, "[gateway]\ndeny_mode = 'x'\n")
    text = str(info.value)
    assert str(tmp_path / "userseg.toml") in text
    assert "gateway.deny_mode: must be 'reject' or 'drop', got 'x'" in text
    assert "gateway: set client_interfaces and/or client_networks; nothing would be policed" in text


def test_unknown_keys_anywhere_are_errors(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """
colour = "blue"
[database]
uri = "sqlite://"
[gateway]
client_interfaces = ["br0"]
colour = "red"
[[gateway.infrastructure]]
name = "dc"
destinations = ["10.0.0.1"]
services = ["dns"]
port = 53
[mappings]
ttl = 100
[policy]
default = "deny"
[[applications]]
name = "a"
destinations = ["10.0.0.2"]
services = ["tcp"]
owner = "me"
[[policies]]
name = "p"
subjects = ["unknown"]
application = "a"
action = "deny"
subject = "unknown"
[logging]
level = "debug"
""",
    )
    assert sorted(errors) == sorted(
        [
            "colour: unknown key",
            "logging: unknown key",
            "database.uri: unknown key",
            "gateway.colour: unknown key",
            "gateway.infrastructure[0].port: unknown key",
            "mappings.ttl: unknown key",
            "policy.default: unknown key",
            "applications[0].owner: unknown key",
            "policies[0].subject: unknown key",
        ]
    )


def test_nothing_policed_is_an_error(tmp_path: Path) -> None:
    for text in ("", "[gateway]\nclient_interfaces = []\nclient_networks = []\n"):
        errors = _errors(tmp_path, text)
        assert errors == ["gateway: set client_interfaces and/or client_networks; nothing would be policed"]


def test_wrong_section_shapes(tmp_path: Path) -> None:
    errors = _errors(tmp_path, 'mappings = 3\napplications = "x"\npolicies = [1]\n' + MINIMAL)
    assert "mappings: must be a table ([mappings]), got integer 3" in errors
    assert "applications: must be an array of tables ([[applications]]), got 'x'" in errors
    assert "policies[0]: must be a table, got integer 1" in errors


def test_duplicate_policy_and_infrastructure_names(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        MINIMAL
        + """
[[gateway.infrastructure]]
name = "x"
destinations = ["10.0.0.1"]
services = ["dns"]
[[gateway.infrastructure]]
name = "x"
destinations = ["10.0.0.2"]
services = ["dns"]
[[policies]]
name = "p"
subjects = ["unknown"]
application = "a"
action = "deny"
[[policies]]
name = "p"
subjects = ["unknown"]
application = "a"
action = "deny"
""",
    )
    assert errors == [
        "gateway.infrastructure[1].name: duplicate infrastructure name 'x' (also gateway.infrastructure[0])",
        "policies[1].name: duplicate policy name 'p' (also policies[0])",
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"cannot read config file {path}: No such file or directory"]


def test_bad_toml_syntax_names_file_and_position(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "[gateway\nclient_interfaces = 1\n")
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'userseg.toml'}: invalid TOML: ")
    assert "line 1" in errors[0]


def test_parse_config_takes_a_dict_and_source() -> None:
    cfg = parse_config({"gateway": {"client_networks": ["192.0.2.0/24"]}}, "<test>")
    assert cfg.source == "<test>"
    assert cfg.gateway.client_networks == (AddressRange.parse("192.0.2.0/24"),)
    with pytest.raises(ConfigError) as info:
        parse_config({"gateway": {"client_networks": ["nope"]}}, "<test>")
    assert info.value.source == "<test>"
    assert info.value.errors[0].startswith("gateway.client_networks[0]: bad address, CIDR or range 'nope'")


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("USERSEG_CONFIG", raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == Path("/etc/userseg/userseg.toml")
    monkeypatch.setenv("USERSEG_CONFIG", str(tmp_path / "x.toml"))
    assert default_config_path() == tmp_path / "x.toml"
