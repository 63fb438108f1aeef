"""What each Windows event id means, independent of the wrapper format."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.events.formats.corpus import RECEIVED, SOURCE
from userseg.events.formats.common import Reject, Skip
from userseg.events.formats.windows import check_channel, login_event
from userseg.events.model import EventKind, LoginEvent

DATA = {
    "TargetUserName": "alice",
    "TargetDomainName": "LAB",
    "IpAddress": "198.18.10.11",
    "LogonType": "3",
    "TargetLogonId": "0x1e3237",
    "ServiceName": "krbtgt",
}


def event(eid: int, **changes: Any) -> LoginEvent:
    data = {**DATA, **changes}
    return login_event(eid, data, host="DC1.lab.example", time=RECEIVED, source=SOURCE, fmt="test")


@pytest.mark.parametrize(
    ("eid", "status", "kind"),
    [
        (4624, None, EventKind.LOGON),
        (4625, "0xc000006d", EventKind.FAILURE),
        (4634, None, EventKind.LOGOFF),
        (4647, None, EventKind.LOGOFF),
        (4768, "0x0", EventKind.LOGON),
        (4768, "0", EventKind.LOGON),
        (4768, "0x6", EventKind.FAILURE),  # unknown principal
        (4768, "0x18", EventKind.FAILURE),  # pre-authentication failed
        (4769, "0x0", EventKind.LOGON),
        (4769, "0x1b", EventKind.FAILURE),
        (4770, None, EventKind.LOGON),
    ],
)
def test_kind_by_event_id(eid: int, status: str | None, kind: EventKind) -> None:
    ev = event(eid, Status=status)
    assert ev.kind is kind and ev.event_id == eid


def test_logoffs_carry_no_address_and_keep_the_logon_id() -> None:
    ev = event(4634)
    assert ev.ip is None and ev.logon_id == "0x1e3237" and ev.host == "DC1.lab.example"


def test_logon_id_only_where_it_pairs_sessions() -> None:
    assert event(4624).logon_id == "0x1e3237"
    assert event(4768, Status="0x0").logon_id == ""
    assert event(4625).logon_id == ""


def test_service_ticket_account_is_the_principal() -> None:
    ev = event(
        4769,
        Status="0x0",
        TargetUserName="alice@LAB.EXAMPLE",
        TargetDomainName="LAB.EXAMPLE",
        ServiceName="FS1$",
    )
    assert (ev.user, ev.domain, dict(ev.detail)["service"]) == ("alice", "LAB.EXAMPLE", "FS1$")
    assert ev.ip == ipaddress.ip_address("198.18.10.11")


@pytest.mark.parametrize("eid", [4672, 4688, 4720, 5140, 0, 4623, 4771])
def test_other_event_ids_are_skipped(eid: int) -> None:
    with pytest.raises(Skip, match=f"event {eid} is not a logon event"):
        event(eid)


@pytest.mark.parametrize("status", [None, "", "-"])
def test_ticket_events_without_status_are_skipped(status: str | None) -> None:
    with pytest.raises(Skip, match="without a result status"):
        event(4768, Status=status)


def test_numbers_where_text_is_expected_are_accepted() -> None:
    ev = event(4624, LogonType=10, TargetUserName=12345)
    assert ev.logon_type == 10 and ev.user == "12345"


def test_detail_in_a_fixed_order() -> None:
    ev = event(
        4625, AuthenticationPackageName="NTLM", WorkstationName="WKS1", Status="0xc000006d", SubStatus="-"
    )
    assert ev.detail == (
        ("format", "test"),
        ("auth", "NTLM"),
        ("workstation", "WKS1"),
        ("service", "krbtgt"),
        ("status", "0xc000006d"),
    )


def test_logon_type_out_of_range_is_rejected() -> None:
    with pytest.raises(Reject, match="LogonType out of range"):
        event(4624, LogonType="99999999")


@pytest.mark.parametrize("channel", ["", "Security", "security"])
def test_security_channel(channel: str) -> None:
    check_channel(channel, 4624)


def test_other_channel() -> None:
    with pytest.raises(Skip, match="from log 'Application'"):
        check_channel("Application", 4624)
