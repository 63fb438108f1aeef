"""Merge the store's contents with the config file into one Snapshot.

Rule (documented in the README): applications and policies declared in the
config file win over store entries of the same name; the store refuses to
create such names through the CLI/API, so a clash only arises when the config
grows an entry the store already had, and then the config's version is used.
The config's `policy.default_action`, when set, overrides the store setting.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from userseg.model import Action, Application, Mapping, Policy, Snapshot, User

if TYPE_CHECKING:
    from userseg.config import Config
    from userseg.store import Store


def merge(
    config: Config,
    users: dict[str, User],
    mappings: tuple[Mapping, ...],
    store_apps: dict[str, Application],
    store_policies: tuple[Policy, ...] | list[Policy],
    store_default: Action,
) -> Snapshot:
    apps = dict(store_apps)
    apps.update({a.name: a for a in config.applications})
    policies = {p.name: p for p in store_policies}
    policies.update({p.name: p for p in config.policies})
    return Snapshot(
        users=users,
        mappings=mappings,
        applications=apps,
        policies=tuple(policies.values()),
        default_action=config.default_action or store_default,
        gateway=config.gateway,
    )


def load_snapshot(store: Store, config: Config, now: datetime) -> Snapshot:
    users, mappings, apps, policies, default = store.snapshot_parts(now)
    return merge(config, users, mappings, apps, policies, default)
