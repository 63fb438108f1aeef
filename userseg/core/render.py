"""render(desired) -> TableSpec: the entitlement model laid out as nftables objects.

```
forward (hook forward): iifname @clients_if jump police; ip saddr @clients4 jump police; ...
police:  ct established,related accept; dest in @infra4/6 accept;
         ip saddr vmap @user4; ip6 saddr vmap @user6; goto <unknown class>
c_XXXX:  [stage log]; dest in @c_XXXX_4/6 accept; goto deny     (default deny)
deny:    log; tcp reset; icmpx admin-prohibited; drop
```
user4/6 elements are `ip -> goto c_XXXX` with the mapping's remaining lifetime
as timeout and its user as comment (core.usermap), so the kernel can say who an
IP is and the mappings can be rebuilt from it.
Only traffic entering from client interfaces/networks is policed; replies are
accepted by conntrack, and infrastructure is reachable for unmapped clients so
that anybody can log on at all.
"""

from __future__ import annotations

from functools import partial
from ipaddress import IPv6Address

from userseg.core.compile import DesiredState, EntitlementClass
from userseg.core.table import (
    Accept,
    AcceptEstablished,
    AcceptIfDestIn,
    BaseHook,
    Box,
    ChainSpec,
    Deny,
    Goto,
    GotoIfDestIn,
    JumpIfIifname,
    JumpIfSaddrIn,
    LogIfDestIn,
    MapElement,
    Rule,
    SetKind,
    SetSpec,
    TableSpec,
    VmapSaddr,
)
from userseg.core.usermap import USER_MAP, USER_MAP_KIND, element_comments
from userseg.model import Action

FORWARD = "forward"
POLICE = "police"
DENY = "deny"
CLIENTS_IF = "clients_if"
CLIENTS = {4: "clients4", 6: "clients6"}
INFRA = {4: "infra4", 6: "infra6"}
DEST_KIND = {4: SetKind.DEST4, 6: SetKind.DEST6}
NET_KIND = {4: SetKind.NET4, 6: SetKind.NET6}
VMAP_KIND = USER_MAP_KIND
DENY_PREFIX = "userseg:deny "


def class_set(cls: str, version: int) -> str:
    return f"{cls}_{version}"


def stage_set(cls: str, version: int) -> str:
    return f"{cls}_s{version}"


def _split(boxes: frozenset[Box]) -> dict[int, frozenset[object]]:
    return {v: frozenset(b for b in boxes if b.version == v) for v in (4, 6)}


def _class_objects(
    cls: EntitlementClass, desired: DesiredState
) -> tuple[dict[str, SetSpec], dict[str, frozenset[object]], ChainSpec]:
    sets: dict[str, SetSpec] = {}
    elements: dict[str, frozenset[object]] = {}
    rules: list[Rule] = []
    gw = desired.gateway
    # Only non-empty sets are created: the kernel keeps a table's sets in a list, so
    # every set costs at load time, and most classes have no IPv6 or staged boxes.
    if cls.has_staged_rules and gw.log_group is not None:
        for v, boxes in _split(cls.staged).items():
            if boxes:
                name = stage_set(cls.name, v)
                sets[name] = SetSpec(name, DEST_KIND[v])
                elements[name] = boxes
                rules.append(
                    LogIfDestIn(v, name, f"userseg:stage {cls.name} ", gw.log_group, gw.log_rate_per_second)
                )
    for v, boxes in _split(cls.boxes).items():
        if not boxes:
            continue
        name = class_set(cls.name, v)
        sets[name] = SetSpec(name, DEST_KIND[v])
        elements[name] = boxes
        if cls.match_action is Action.ALLOW:
            rules.append(AcceptIfDestIn(v, name))
        else:
            rules.append(GotoIfDestIn(v, name, DENY))
    rules.append(Goto(DENY) if cls.match_action is Action.ALLOW else Accept())
    return sets, elements, ChainSpec(cls.name, tuple(rules))


def render(desired: DesiredState) -> TableSpec:
    gw = desired.gateway
    sets: dict[str, SetSpec] = {}
    elements: dict[str, frozenset[object]] = {}
    chains: dict[str, ChainSpec] = {}

    forward: list[Rule] = []
    if gw.client_interfaces:
        sets[CLIENTS_IF] = SetSpec(CLIENTS_IF, SetKind.IFNAME)
        elements[CLIENTS_IF] = frozenset(gw.client_interfaces)
        forward.append(JumpIfIifname(CLIENTS_IF, POLICE))
    for v in (4, 6):
        nets = frozenset(n for n in gw.client_networks if n.version == v)
        if nets:
            sets[CLIENTS[v]] = SetSpec(CLIENTS[v], NET_KIND[v])
            elements[CLIENTS[v]] = frozenset(nets)
            forward.append(JumpIfSaddrIn(v, CLIENTS[v], POLICE))
    chains[FORWARD] = ChainSpec(FORWARD, tuple(forward), base=BaseHook())

    police: list[Rule] = [AcceptEstablished()]
    for v, boxes in _split(desired.infrastructure).items():
        sets[INFRA[v]] = SetSpec(INFRA[v], DEST_KIND[v])
        elements[INFRA[v]] = boxes
        police.append(AcceptIfDestIn(v, INFRA[v]))
    by_version: dict[int, list[MapElement]] = {4: [], 6: []}
    element = partial(tuple.__new__, MapElement)  # MapElement() runs a Python-level __new__
    comments = element_comments([t.user for t in desired.mappings.values()])
    for (ip, t), comment in zip(desired.mappings.items(), comments, strict=True):
        by_version[6 if isinstance(ip, IPv6Address) else 4].append(
            element((int(ip), t.class_name, t.expires_at, comment))
        )
    for v in (4, 6):
        sets[USER_MAP[v]] = SetSpec(USER_MAP[v], VMAP_KIND[v])
        elements[USER_MAP[v]] = frozenset(by_version[v])
        police.append(VmapSaddr(v, USER_MAP[v]))
    police.append(Goto(desired.unknown_class))
    chains[POLICE] = ChainSpec(POLICE, tuple(police))

    for cls in desired.classes.values():
        c_sets, c_elements, chain = _class_objects(cls, desired)
        sets.update(c_sets)
        elements.update(c_elements)
        chains[cls.name] = chain

    chains[DENY] = ChainSpec(DENY, (Deny(gw.deny_mode, DENY_PREFIX, gw.log_group, gw.log_rate_per_second),))
    return TableSpec(sets=sets, elements=elements, chains=chains)
