"""The TOML configuration file: where the database is, how the gateway polices,
and the applications and policies an admin wants pinned in version control.

Applications and policies declared here are read-only everywhere else (their
`origin` is "config", and "config wins"), so a GitOps-managed file cannot be
silently drifted by someone clicking in the UI.  Loading never stops at the
first mistake: every problem is collected with its key path and reported in
one ConfigError, because a daemon refusing to start should say everything
that is wrong at once.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from userseg.config_directory import parse_directory
from userseg.config_ingest import bind_account, parse_ingest
from userseg.config_schema import IFNAME_RE, Section, expand_service
from userseg.config_service import ServiceSettings, parse_service
from userseg.directory.model import DirectorySettings
from userseg.events.settings import IngestSettings
from userseg.model import (
    Action,
    AddressRange,
    Application,
    DenyMode,
    GatewaySettings,
    Mode,
    Policy,
    Service,
    Subject,
)

DEFAULT_CONFIG_PATH = Path("/etc/userseg/userseg.toml")
CONFIG_ENV_VAR = "USERSEG_CONFIG"
DEFAULT_DATABASE_URL = "sqlite:////var/lib/userseg/userseg.db"
DEFAULT_TTL = 2700
DEFAULT_RESYNC_INTERVAL = 30.0

_INT32 = (-(2**31), 2**31 - 1)  # policy priorities must fit an INTEGER column on every database


class ConfigError(Exception):
    """The configuration is unusable; `errors` lists every problem found, each with its key path."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        head = f"invalid configuration {source}" if source else "invalid configuration"
        super().__init__(f"{head}:\n" + "\n".join(f"  {e}" for e in self.errors))


@dataclass(frozen=True)
class Config:
    """The validated configuration; model types only, so callers never re-parse strings."""

    source: str
    database_url: str
    gateway: GatewaySettings
    netns: str | None
    resync_interval: float
    default_ttl: int
    default_action: Action | None  # None: the store's `default_action` setting decides
    applications: tuple[Application, ...]
    policies: tuple[Policy, ...]
    directory: DirectorySettings | None = None  # None: no AD sync (users come from `directory import`)
    ingest: IngestSettings | None = None  # None: no login sources (mappings from the CLI only)
    service: ServiceSettings = field(default_factory=ServiceSettings)


def default_config_path() -> Path:
    """$USERSEG_CONFIG if set (tests, containers), else the packaged default location."""
    env = os.environ.get(CONFIG_ENV_VAR)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError naming the file on any problem."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file {source}: {exc.strerror or exc}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"cannot read config file {source}: not UTF-8 ({exc})"], source) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"], source) from None
    return parse_config(data, source)


def parse_config(data: Mapping[str, object], source: str) -> Config:
    """Validate already-parsed TOML data; `source` names it in messages and in Config.source."""
    errors: list[str] = []
    root = Section(data, "", errors)

    database = root.table("database")
    database_url = database.string("url", DEFAULT_DATABASE_URL)
    if not database_url.strip():
        database.error("url", "must not be empty")
    database.finish()

    gateway, netns, resync_interval = _parse_gateway(root.table("gateway"))

    mappings = root.table("mappings")
    default_ttl = mappings.integer("default_ttl", DEFAULT_TTL, 60, 604800)
    mappings.finish()

    policy = root.table("policy")
    default_action = policy.choice("default_action", Action, None)
    policy.finish()

    directory = parse_directory(root.table("directory"))
    bind = bind_account(directory.bind_user) if directory is not None else None
    ingest = parse_ingest(
        root.table("ingest"), default_ttl, gateway.client_networks, (bind,) if bind else ()
    )
    service = parse_service(root.table("service"))
    applications = _parse_applications(root.tables("applications"))
    policies = _parse_policies(root.tables("policies"))
    root.finish()

    if errors:
        raise ConfigError(errors, source)
    return Config(
        source=source,
        database_url=database_url,
        gateway=gateway,
        netns=netns,
        resync_interval=resync_interval,
        default_ttl=default_ttl,
        default_action=default_action,
        applications=applications,
        policies=policies,
        directory=directory,
        ingest=ingest,
        service=service,
    )


def _parse_gateway(sec: Section) -> tuple[GatewaySettings, str | None, float]:
    interfaces: list[str] = []
    for where, ifname in sec.strings("client_interfaces"):
        if IFNAME_RE.fullmatch(ifname):
            interfaces.append(ifname)
        else:
            sec.error(where, f"bad interface name {ifname!r} (1-15 characters of A-Z a-z 0-9 _ . : @ -)")
    networks = sec.parsed("client_networks", AddressRange.parse)
    if sec.is_empty("client_interfaces") and sec.is_empty("client_networks"):
        sec.error(None, "set client_interfaces and/or client_networks; nothing would be policed")

    deny_mode = sec.choice("deny_mode", DenyMode, DenyMode.REJECT) or DenyMode.REJECT
    log_group = sec.integer("log_group", 100, 0, 65535)
    log_rate = sec.integer("log_rate", 50, 1, 100000)
    netns = sec.string("netns", "")
    if netns and ("/" in netns or "\0" in netns or netns in (".", "..") or len(netns) > 255):
        sec.error("netns", f"bad network namespace name {netns!r} (a name under /run/netns, no '/')")
    resync = sec.number("resync_interval", DEFAULT_RESYNC_INTERVAL, 1, 86400)

    infrastructure: list[Application] = []
    seen: dict[str, str] = {}
    for entry in sec.tables("infrastructure"):
        name = entry.name("name")
        if name is not None:
            _check_unique(entry, name, seen, "infrastructure")
        destinations = entry.parsed("destinations", AddressRange.parse, required=True)
        services = _services(entry)
        description = entry.string("description", "")
        entry.finish()
        if name is not None:
            infrastructure.append(
                Application(name, tuple(destinations), services, description=description, origin="config")
            )
    sec.finish()

    settings = GatewaySettings(
        client_interfaces=tuple(interfaces),
        client_networks=tuple(networks),
        infrastructure=tuple(infrastructure),
        deny_mode=deny_mode,
        log_group=log_group or None,  # 0 disables logging
        log_rate_per_second=log_rate,
    )
    return settings, (netns or None), resync


def _services(sec: Section) -> tuple[Service, ...]:
    """`services`, with presets expanded and exact duplicates dropped (order kept)."""
    out: dict[Service, None] = {}
    for group in sec.parsed("services", expand_service, required=True):
        out.update(dict.fromkeys(group))
    return tuple(out)


def _check_unique(sec: Section, name: str, seen: dict[str, str], kind: str) -> None:
    """Record `name` as used by `sec`; a second use is an error pointing at the first."""
    if name in seen:
        sec.error("name", f"duplicate {kind} name {name!r} (also {seen[name]})")
    else:
        seen[name] = sec.path


def _parse_applications(sections: list[Section]) -> tuple[Application, ...]:
    apps: list[Application] = []
    seen: dict[str, str] = {}
    for sec in sections:
        name = sec.name("name")
        if name is not None:
            _check_unique(sec, name, seen, "application")
        destinations = sec.parsed("destinations", AddressRange.parse, required=True)
        services = _services(sec)
        labels = frozenset(text.strip() for _, text in sec.strings("labels"))
        description = sec.string("description", "")
        sec.finish()
        if name is not None:
            apps.append(
                Application(
                    name,
                    tuple(destinations),
                    services,
                    labels=labels,
                    description=description,
                    origin="config",
                )
            )
    return tuple(apps)


def _parse_policies(sections: list[Section]) -> tuple[Policy, ...]:
    policies: list[Policy] = []
    seen: dict[str, str] = {}
    for index, sec in enumerate(sections):
        name = sec.name("name")
        if name is not None:
            _check_unique(sec, name, seen, "policy")
        priority = sec.integer("priority", (index + 1) * 10, *_INT32)
        subjects = tuple(dict.fromkeys(sec.parsed("subjects", Subject.parse, required=True)))
        application = sec.name("application")
        action = sec.choice("action", Action, None, required=True)
        mode = sec.choice("mode", Mode, Mode.ENFORCE) or Mode.ENFORCE
        enabled = sec.boolean("enabled", True)
        description = sec.string("description", "")
        sec.finish()
        if name is not None and application is not None and action is not None:
            policies.append(
                Policy(
                    name=name,
                    priority=priority,
                    subjects=subjects,
                    application=application,
                    action=action,
                    mode=mode,
                    enabled=enabled,
                    description=description,
                    origin="config",
                )
            )
    return tuple(policies)
