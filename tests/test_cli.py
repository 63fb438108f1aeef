"""Pure parts of the command line: destination parsing and argument errors (no kernel)."""

from __future__ import annotations

import ipaddress

import pytest

from userseg.cli import UsageError, build_parser, parse_destination
from userseg.model import Proto


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("198.18.20.10:443", ("198.18.20.10", Proto.TCP, 443)),
        ("198.18.20.10:53/udp", ("198.18.20.10", Proto.UDP, 53)),
        ("198.18.20.10/icmp", ("198.18.20.10", Proto.ICMP, None)),
        ("[2001:db8::10]:443/tcp", ("2001:db8::10", Proto.TCP, 443)),
        ("2001:db8::10/icmp", ("2001:db8::10", Proto.ICMP, None)),
    ],
)
def test_destinations(text: str, want: tuple[str, Proto, int | None]) -> None:
    dest, proto, port = parse_destination(text)
    assert (dest, proto, port) == (ipaddress.ip_address(want[0]), want[1], want[2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("198.18.20.10", "needs a port for tcp"),
        ("198.18.20.10:70000", "port must be 0-65535"),
        ("198.18.20.10:80/gre", "bad destination"),
        ("nonsense:80", "bad destination"),
        ("2001:db8::10:443", "write IPv6 with a port as [ADDR]:PORT"),
    ],
)
def test_bad_destinations_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_destination(text)


def test_config_option_is_accepted_before_or_after_the_command() -> None:
    parser = build_parser()
    assert str(parser.parse_args(["--config", "/a.toml", "status"]).config) == "/a.toml"
    assert str(parser.parse_args(["status", "--config", "/b.toml"]).config) == "/b.toml"
    assert (
        str(parser.parse_args(["map", "add", "alice", "198.18.10.11", "--config", "/c.toml"]).config)
        == "/c.toml"
    )
