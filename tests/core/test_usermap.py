"""User-map comments (core.usermap): the format render writes, and what recovery trusts."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.strategies import NOW
from tests.core.test_compile import pol, world
from userseg.core.compile import compile_state
from userseg.core.render import render
from userseg.core.table import MapElement
from userseg.core.usermap import (
    COMMENT_MAX_BYTES,
    TRUNCATION_MARK,
    comment_fits,
    comment_user,
    element_comment,
    element_comments,
)
from userseg.model import Mapping

A = ipaddress.ip_address
HOUR = NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        'o\'brien "zoë"',  # quotes are data, not syntax: JSON and netlink carry them as is
        "名前",
        "x" * COMMENT_MAX_BYTES,
        "é" * (COMMENT_MAX_BYTES // 2),  # 128 bytes in UTF-8
        "tab\tand\nnewline",
    ],
)
def test_a_name_that_fits_is_its_own_comment_and_is_trusted(name: str) -> None:
    assert element_comment(name) == name
    assert comment_user(name) == name
    assert comment_fits(name)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("a" * 200, "a" * 125),
        ("é" * 100, "é" * 62),  # 124 bytes: the 63rd "é" would straddle the cut
        ("ab\0cd", "ab?cd"),  # NUL cannot be stored (the comment is NUL-terminated)
        ("bad\udcff", "bad?"),  # a lone surrogate is not UTF-8
        ("ends with" + TRUNCATION_MARK, "ends with" + TRUNCATION_MARK),  # would pass for a cut name
    ],
)
def test_other_names_are_cut_marked_and_never_trusted(name: str, kept: str) -> None:
    comment = element_comment(name)
    assert comment == kept + TRUNCATION_MARK
    assert len(comment.encode()) <= COMMENT_MAX_BYTES
    assert comment_fits(comment)
    assert comment_user(comment) is None


def test_no_name_means_no_comment_and_nothing_to_recover() -> None:
    assert element_comment("") == ""
    assert comment_user("") is None


@pytest.mark.parametrize("comment", ["x" * 129, "é" * 65, "a\0b", "\udcff"])
def test_what_the_writers_refuse(comment: str) -> None:
    assert not comment_fits(comment)


@given(st.text(max_size=300))
def test_any_name_becomes_a_writable_comment_that_never_names_someone_else(name: str) -> None:
    comment = element_comment(name)
    assert comment_fits(comment)
    whole = bool(name) and comment_fits(name) and not name.endswith(TRUNCATION_MARK)
    assert comment_user(comment) == (name if whole else None)


@given(st.lists(st.text(max_size=140) | st.text(alphabet="abc.-_$", max_size=8), max_size=20))
def test_bulk_comments_equal_one_by_one(names: list[str]) -> None:
    assert element_comments(names) == [element_comment(n) for n in names]


def test_render_names_the_user_of_every_element() -> None:
    long = "l" * 200
    snap = world([pol("fin-web", 10, "group:finance", "web", "allow")])
    snap = replace(
        snap,
        users={**snap.users, long: replace(snap.users["carol"], name=long)},
        mappings=(*snap.mappings, Mapping(A("198.18.10.20"), long, "test", NOW, NOW, HOUR)),
    )
    spec = render(compile_state(snap, NOW))
    users = {e.addr: e.user for e in spec.elements["user4"] if isinstance(e, MapElement)}
    assert users == {
        int(A("198.18.10.11")): "alice",
        int(A("198.18.10.12")): "bob",
        int(A("198.18.10.13")): "carol",
        int(A("198.18.10.20")): "l" * 125 + TRUNCATION_MARK,
    }
