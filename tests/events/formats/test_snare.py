"""Snare MSWinEventLog lines: the published samples and the message label reader."""

from __future__ import annotations

import ipaddress

import pytest

from tests.events.formats.corpus import DATA, RECEIVED, SOURCE, Case, cases, check, params
from userseg.events.formats import parse
from userseg.events.formats.snare import message_fields
from userseg.events.model import EventKind, LoginEvent, Rejected

SAMPLES = [c for c in cases("windows-samples", "") if c.fmt == "snare"]
USER_4624 = (DATA / "windows-samples" / "snare" / "4624-logon-type3-user.log").read_text()


@params(SAMPLES)
def test_published_samples(case: Case) -> None:
    check(parse("snare", case.data, source=SOURCE, received=RECEIVED), case.expect)


def test_every_published_snare_sample_is_covered() -> None:
    assert len(SAMPLES) == len(list((DATA / "windows-samples" / "snare").iterdir())) == 6


def test_message_fields_keep_sections_apart() -> None:
    message = USER_4624.split("\t")[14]
    fields = message_fields(message)
    assert fields[("Subject", "Account Name")] == "-"  # the service that asked
    assert fields[("New Logon", "Account Name")] == "rdaw"  # the user
    assert fields[("Network Information", "Workstation Name")] == ""  # empty, not the next label
    assert fields[("Network Information", "Source Network Address")] == "192.168.1.23"
    assert fields[("*", "Logon Type")] == "3"
    assert fields[("Detailed Authentication Information", "Key Length")] == "0"  # cut before the prose


def test_longer_labels_win_over_their_suffixes() -> None:
    fields = message_fields("Failure Information:   Status:  0xC000006D   Sub Status:  0xC000006A")
    assert fields[("Failure Information", "Status")] == "0xC000006D"
    assert fields[("Failure Information", "Sub Status")] == "0xC000006A"
    linked = message_fields("New Logon:   Logon ID:  0x1   Linked Logon ID:  0x2")
    assert linked[("New Logon", "Logon ID")] == "0x1"


def test_value_with_single_spaces_is_kept_whole() -> None:
    fields = message_fields("New Logon:   Account Name:  ANONYMOUS LOGON   Account Domain:  NT AUTHORITY")
    assert fields[("New Logon", "Account Name")] == "ANONYMOUS LOGON"
    assert fields[("New Logon", "Account Domain")] == "NT AUTHORITY"


def test_failed_logon_reads_the_failed_account_section() -> None:
    message = (
        "An account failed to log on.    Subject:   Security ID:  S-1-5-18   Account Name:  WKS1$   "
        "Account Domain:  LAB   Logon ID:  0x3e7    Logon Type:   3    Account For Which Logon Failed:   "
        "Security ID:  S-1-0-0   Account Name:  mallory   Account Domain:  LAB    Failure Information:   "
        "Failure Reason:  Unknown user name or bad password.   "
        "Status:   0xC000006D   Sub Status:  0xC000006A    "
        "Process Information:   Caller Process ID: 0x0    Network Information:   Workstation Name: KALI   "
        "Source Network Address: 198.18.10.66   Source Port:  51515"
    )
    fields = USER_4624.split("\t")
    fields[6], fields[8], fields[14] = "4625", "mallory", message
    ev = parse("snare", "\t".join(fields), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent)
    assert (ev.kind, ev.user, ev.domain, ev.ip) == (
        EventKind.FAILURE,
        "mallory",
        "LAB",
        ipaddress.ip_address("198.18.10.66"),
    )
    assert dict(ev.detail)["status"] == "0xC000006D" and dict(ev.detail)["sub_status"] == "0xC000006A"


def test_non_english_message_falls_back_to_the_user_column_without_address() -> None:
    fields = USER_4624.split("\t")
    fields[14] = "Ein Konto wurde erfolgreich angemeldet."
    ev = parse("snare", "\t".join(fields), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and (ev.user, ev.domain, ev.ip) == ("rdaw", "", None)


@pytest.mark.parametrize(
    "prefix", ["<13>May  9 18:35:51 CLONWWADDC1 ", "<13>1 2011-05-09T18:35:51Z dc1 - - - - "]
)
def test_syslog_prefix(prefix: str) -> None:
    line = prefix + USER_4624[USER_4624.index("MSWinEventLog") :]
    ev = parse("snare", line, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.user == "rdaw" and ev.host == "CLONWWADDC1.clone-systems.com"


def test_overlong_time_field_is_rejected() -> None:
    fields = USER_4624.split("\t")
    fields[5] = "x" * 100
    result = parse("snare", "\t".join(fields), source=SOURCE, received=RECEIVED)
    assert isinstance(result, Rejected) and "time field" in result.reason
