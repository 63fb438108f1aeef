"""The [directory] section: defaults, secure-by-default TLS, password sources, error reporting."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from userseg.config import Config, ConfigError, load_config, parse_config
from userseg.directory.model import (
    AuthMethod,
    DirectoryServer,
    DirectorySettings,
    StalePolicy,
    TlsMode,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "userseg.toml"
MINIMAL = '[gateway]\nclient_interfaces = ["br0"]\n'


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "ad-password"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


def load(tmp_path: Path, directory: str) -> Config:
    path = tmp_path / "userseg.toml"
    path.write_text(MINIMAL + directory)
    return load_config(path)


def settings(tmp_path: Path, directory: str) -> DirectorySettings:
    cfg = load(tmp_path, directory)
    assert cfg.directory is not None
    return cfg.directory


def errors(tmp_path: Path, directory: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, directory)
    return info.value.errors


def simple(secret: Path, *lines: str, servers: str = '["ldaps://dc1.example.net"]') -> str:
    body = [f"servers = {servers}", 'bind_user = "svc@example.net"', f'password_file = "{secret}"', *lines]
    return "[directory]\n" + "\n".join(body) + "\n"


# --- valid sections -------------------------------------------------------------------


def test_absent_section_means_no_directory_sync(tmp_path: Path) -> None:
    assert load(tmp_path, "").directory is None


def test_minimal_section_gets_the_documented_defaults(tmp_path: Path, secret: Path) -> None:
    got = settings(tmp_path, simple(secret))
    assert got == DirectorySettings(
        servers=(DirectoryServer("dc1.example.net", 636, TlsMode.LDAPS),),
        bind_user="svc@example.net",
        password_file=secret,
    )
    # the defaults the example config documents
    assert got.auth is AuthMethod.SIMPLE
    assert got.tls_validate and got.notifications
    assert (got.page_size, got.connect_timeout, got.operation_timeout) == (500, 5.0, 60.0)
    assert (got.incremental_interval, got.full_interval, got.max_staleness) == (60.0, 3600.0, 86400.0)
    assert got.on_stale is StalePolicy.KEEP
    assert got.max_delete_fraction == 0.5


def test_full_valid_section(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    got = settings(
        tmp_path,
        f"""
[directory]
servers = ["ldaps://DC1.example.net:3269", "ldap://198.18.20.11", "ldaps://[2001:db8::10]"]
auth = "gssapi"
password_credential = "userseg-ad"
ca_file = "{ca}"
tls_validate = false
server_name = "dc.example.net"
base_dn = "DC=example,DC=net"
user_base_dns = ["OU=Staff,DC=example,DC=net", " OU=Contractors,DC=example,DC=net "]
group_base_dns = ["OU=Groups,DC=example,DC=net"]
user_filter = "(department=Sales)"
group_filter = "(|(cn=app-*)(cn=Finance\\\\29))"
group_include = ["app-*", " Finance "]
page_size = 1000
connect_timeout = 2
operation_timeout = 30.5
notifications = false
incremental_interval = 5
full_interval = 600
max_staleness = 3600
on_stale = "fail-closed"
max_delete_fraction = 0.1
""",
    )
    assert got == DirectorySettings(
        servers=(
            DirectoryServer("dc1.example.net", 3269, TlsMode.LDAPS),
            DirectoryServer("198.18.20.11", 389, TlsMode.STARTTLS),
            DirectoryServer("2001:db8::10", 636, TlsMode.LDAPS),
        ),
        bind_user="",
        password_credential="userseg-ad",
        auth=AuthMethod.GSSAPI,
        ca_file=ca,
        tls_validate=False,
        server_name="dc.example.net",
        base_dn="DC=example,DC=net",
        user_base_dns=("OU=Staff,DC=example,DC=net", "OU=Contractors,DC=example,DC=net"),
        group_base_dns=("OU=Groups,DC=example,DC=net",),
        user_filter="(department=Sales)",
        group_filter="(|(cn=app-*)(cn=Finance\\29))",
        group_include=("app-*", "Finance"),
        page_size=1000,
        connect_timeout=2.0,
        operation_timeout=30.5,
        notifications=False,
        incremental_interval=5.0,
        full_interval=600.0,
        max_staleness=3600.0,
        on_stale=StalePolicy.FAIL_CLOSED,
        max_delete_fraction=0.1,
    )
    assert got.servers[2].url == "ldaps://[2001:db8::10]:636"


def test_ldap_urls_use_starttls_unless_turned_off(tmp_path: Path, secret: Path) -> None:
    servers = '["ldap://dc1.example.net", "ldap://dc2.example.net:1389", "ldaps://dc3.example.net"]'
    default = settings(tmp_path, simple(secret, servers=servers)).servers
    assert [s.tls for s in default] == [TlsMode.STARTTLS, TlsMode.STARTTLS, TlsMode.LDAPS]
    assert [s.url for s in default] == [
        "ldap://dc1.example.net:389",
        "ldap://dc2.example.net:1389",
        "ldaps://dc3.example.net:636",
    ]
    plain = settings(tmp_path, simple(secret, "starttls = false", servers=servers)).servers
    assert [s.tls for s in plain] == [TlsMode.NONE, TlsMode.NONE, TlsMode.LDAPS]  # ldaps stays TLS
    explicit = settings(tmp_path, simple(secret, "starttls = true", servers=servers)).servers
    assert explicit == default


def test_group_readable_password_file_is_accepted(tmp_path: Path, secret: Path) -> None:
    secret.chmod(0o640)
    assert settings(tmp_path, simple(secret)).password_file == secret


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://dc1.example.net", "(use ldaps://HOST[:PORT] or ldap://HOST[:PORT])"),
        ("dc1.example.net", "(use ldaps://HOST[:PORT] or ldap://HOST[:PORT])"),
        ("ldaps://", "(use ldaps://HOST[:PORT] or ldap://HOST[:PORT])"),
        ("ldaps://dc1.example.net/DC=example,DC=net", "only scheme, host and port are allowed"),
        ("ldaps://dc1.example.net?base", "only scheme, host and port are allowed"),
        ("ldaps://dc1.example.net#x", "only scheme, host and port are allowed"),
        ("ldaps://dc1.example.net:99999", "Port out of range"),
        ("ldaps://dc1.example.net:https", "Port could not be cast"),
        ("ldaps://dc1.example.net:0", "port 0"),
    ],
)
def test_bad_server_urls_are_reported_with_their_key_path(
    tmp_path: Path, secret: Path, url: str, problem: str
) -> None:
    servers = f'["ldaps://ok.example.net", "{url}"]'
    [message] = errors(tmp_path, simple(secret, servers=servers))
    assert message.startswith(f"directory.servers[1]: bad server URL {url!r}")
    assert problem in message


@pytest.mark.parametrize(
    "url", ["ldaps://svc:hunter2@dc1.example.net", "ldap://:hunter2@dc1:x", "ldaps://@dc1"]
)
def test_user_info_in_server_urls_is_refused_without_echoing_it(
    tmp_path: Path, secret: Path, url: str
) -> None:
    [message] = errors(tmp_path, simple(secret, servers=f'["{url}"]'))
    assert message.startswith("directory.servers[0]: bad server URL '")
    assert "no user or password in the URL" in message
    assert "hunter2" not in message and "svc" not in message


def test_servers_are_required_and_not_empty(tmp_path: Path, secret: Path) -> None:
    section = f'[directory]\nbind_user = "svc"\npassword_file = "{secret}"\n'
    assert errors(tmp_path, section) == ["directory.servers: missing required key"]
    assert errors(tmp_path, simple(secret, servers="[]")) == ["directory.servers: must not be empty"]
    assert errors(tmp_path, simple(secret, servers='"ldaps://dc1"')) == [
        "directory.servers: must be an array of strings, got 'ldaps://dc1'"
    ]


def test_simple_bind_needs_a_user_and_exactly_one_password_source(tmp_path: Path, secret: Path) -> None:
    servers = 'servers = ["ldaps://dc1.example.net"]\n'
    assert errors(tmp_path, f'[directory]\n{servers}password_file = "{secret}"\n') == [
        "directory.bind_user: missing required key (simple bind needs an account)"
    ]
    neither = errors(tmp_path, f'[directory]\n{servers}bind_user = "svc"\n')
    assert neither == [
        "directory: set exactly one of password_file and password_credential (simple bind needs a password)"
    ]
    both = errors(
        tmp_path,
        f'[directory]\n{servers}bind_user = "svc"\npassword_file = "{secret}"\npassword_credential = "c"\n',
    )
    assert both == neither
    # GSSAPI needs neither
    gss = settings(tmp_path, f'[directory]\n{servers}auth = "gssapi"\n')
    assert gss.auth is AuthMethod.GSSAPI and gss.password_file is None and gss.bind_user == ""


def test_world_readable_or_missing_password_file_is_refused(tmp_path: Path, secret: Path) -> None:
    secret.chmod(0o644)
    assert errors(tmp_path, simple(secret)) == [
        f"directory.password_file: {secret} is readable by every user (chmod 0600 or 0640 it)"
    ]
    missing = tmp_path / "nope"
    [message] = errors(tmp_path, simple(missing))
    assert message == f"directory.password_file: cannot read {missing}: No such file or directory"
    [message] = errors(tmp_path, simple(tmp_path))
    assert message == f"directory.password_file: {tmp_path} is not a regular file"


def test_bad_credential_name_ca_file_server_name_and_dns(tmp_path: Path) -> None:
    got = errors(
        tmp_path,
        f"""
[directory]
servers = ["ldaps://dc1"]
bind_user = "svc"
password_credential = "../etc/shadow"
ca_file = "{tmp_path / "no-ca.pem"}"
server_name = "dc 1"
base_dn = "example.net"
user_base_dns = ["OU=Staff,DC=x", "Staff"]
group_base_dns = ["OU=G\\nroups,DC=x"]
""",
    )
    assert got == [
        "directory.password_credential: bad credential name '../etc/shadow' (1-128 of A-Z a-z 0-9 _ . -)",
        f"directory.ca_file: {tmp_path / 'no-ca.pem'} does not exist or is not a file",
        "directory.server_name: bad host name 'dc 1'",
        "directory.base_dn: bad DN 'example.net' (e.g. OU=Staff,DC=example,DC=net)",
        "directory.user_base_dns[1]: bad DN 'Staff' (e.g. OU=Staff,DC=example,DC=net)",
        "directory.group_base_dns[0]: bad DN 'OU=G\\nroups,DC=x' (e.g. OU=Staff,DC=example,DC=net)",
    ]


@pytest.mark.parametrize(
    "bad",
    ["(department=Sales", "department=Sales", "(a=1))(", "(a=1)(b=2", "(cn=x\\\\)", ")(a=1)("],
)
def test_unbalanced_or_unparenthesised_filters_are_refused(tmp_path: Path, secret: Path, bad: str) -> None:
    [message] = errors(tmp_path, simple(secret, f'user_filter = "{bad}"'))
    assert message.startswith("directory.user_filter: bad LDAP filter ")
    assert "(a parenthesised filter such as (department=Sales))" in message


@pytest.mark.parametrize("good", ["(a=1)", "(&(a=1)(!(b=2)))", "(cn=x\\\\29)", "(cn=\\\\(x\\\\))"])
def test_balanced_filters_are_accepted(tmp_path: Path, secret: Path, good: str) -> None:
    assert settings(tmp_path, simple(secret, f'group_filter = "{good}"')).group_filter == good.replace(
        "\\\\", "\\"
    )


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    got = errors(
        tmp_path,
        """
[directory]
servers = ["http://dc1", "ldaps://dc2", 7]
starttls = "yes"
auth = "ntlm"
user_filter = "(oops"
page_size = 1
connect_timeout = 0
incremental_interval = "soon"
on_stale = "panic"
max_delete_fraction = 2
notifications = 1
group_include = "app-*"
""",
    )
    assert sorted(got) == sorted(
        [
            "directory.servers[0]: bad server URL 'http://dc1' (use ldaps://HOST[:PORT] or ldap://HOST[:PORT])",
            "directory.servers[2]: must be a string, got integer 7",
            "directory.starttls: must be true or false, got 'yes'",
            "directory.auth: must be 'simple' or 'gssapi', got 'ntlm'",
            "directory.bind_user: missing required key (simple bind needs an account)",
            "directory: set exactly one of password_file and password_credential "
            "(simple bind needs a password)",
            "directory.user_filter: bad LDAP filter '(oops' "
            "(a parenthesised filter such as (department=Sales))",
            "directory.page_size: must be between 10 and 5000, got 1",
            "directory.connect_timeout: must be between 0.5 and 120, got 0",
            "directory.incremental_interval: must be a number, got 'soon'",
            "directory.on_stale: must be 'keep' or 'fail-closed', got 'panic'",
            "directory.max_delete_fraction: must be between 0 and 1, got 2",
            "directory.notifications: must be true or false, got integer 1",
            "directory.group_include: must be an array of strings, got 'app-*'",
        ]
    )


def test_unknown_keys_are_refused(tmp_path: Path, secret: Path) -> None:
    assert errors(tmp_path, simple(secret, 'password = "hunter2"', "timeout = 5")) == [
        "directory.password: unknown key",
        "directory.timeout: unknown key",
    ]


def test_directory_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "userseg.toml"
    path.write_text('directory = "ldaps://dc1"\n' + MINIMAL)  # a top-level key, before any table
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["directory: must be a table ([directory]), got 'ldaps://dc1'"]


# --- the shipped example ---------------------------------------------------------------------


def example_directory_lines() -> list[str]:
    """The commented-out [directory] section of the example, uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    keys = [line[1:] for line in lines if re.fullmatch(r"#(\[directory\]|[a-z_]+ = .*)", line)]
    assert keys and keys[0] == "[directory]"
    return keys


def test_example_documents_every_directory_key_and_loads_when_uncommented(tmp_path: Path) -> None:
    lines = example_directory_lines()
    documented = {line.split(" = ")[0] for line in lines[1:]}
    assert documented == {
        "servers", "starttls", "auth", "bind_user", "password_file", "password_credential", "ca_file",
        "tls_validate", "server_name", "server_names", "base_dn", "user_base_dns", "group_base_dns",
        "user_filter", "group_filter", "group_include", "page_size", "connect_timeout", "operation_timeout",
        "notifications", "incremental_interval", "full_interval", "max_staleness", "on_stale",
        "max_delete_fraction",
    }  # fmt: skip
    assert len(documented) == len(lines) - 1  # each key once
    example = EXAMPLE.read_text()
    enabled = example.replace("\n#[directory]\n", "\n[directory]\n", 1)
    for line in lines[1:]:
        enabled = enabled.replace(f"\n#{line}\n", f"\n{line}\n", 1)
    path = tmp_path / "enabled.toml"
    path.write_text(enabled)
    got = load_config(path).directory
    assert got is not None
    # apart from the required keys (which have no default), the values shown are the defaults
    assert got == DirectorySettings(
        servers=(
            DirectoryServer("dc1.example.net", 636, TlsMode.LDAPS),
            DirectoryServer("dc2.example.net", 636, TlsMode.LDAPS),
        ),
        bind_user="svc-userseg@example.net",
        password_credential="userseg-ad-password",
    )
    # and as shipped, the section is off
    assert load_config(EXAMPLE).directory is None


def test_server_names_give_each_server_its_certificate_name(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw.chmod(0o600)
    base = (
        'servers = ["ldaps://198.18.20.10", "ldaps://198.18.20.11"]\n'
        f'bind_user = "u"\npassword_file = "{pw}"\n'
    )
    cfg = parse_config(
        tomllib.loads(
            MINIMAL + "[directory]\n" + base + 'server_names = ["DC1.lab.example", "DC2.lab.example"]'
        ),
        "t",
    )
    assert cfg.directory is not None
    assert [s.tls_name for s in cfg.directory.servers] == ["DC1.lab.example", "DC2.lab.example"]
    with pytest.raises(ConfigError) as info:
        parse_config(
            tomllib.loads(MINIMAL + "[directory]\n" + base + 'server_names = ["DC1.lab.example"]'), "t"
        )
    assert info.value.errors == [
        "directory.server_names: must name one certificate name per entry of servers (2), got 1"
    ]
    with pytest.raises(ConfigError) as info:
        parse_config(
            tomllib.loads(MINIMAL + "[directory]\n" + base + 'server_name = "a"\nserver_names = ["b", "c"]'),
            "t",
        )
    assert info.value.errors == [
        "directory.server_names: set server_name (one name for all servers) or server_names, not both"
    ]
