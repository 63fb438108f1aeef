from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from userseg.core import space
from userseg.core.table import Box


@st.composite
def boxes(draw: st.DrawFn) -> Box:
    a = draw(st.integers(0, 20))
    p = draw(st.integers(0, 20))
    return Box(4, a, draw(st.integers(a, 20)), draw(st.sampled_from([6, 17])), p, draw(st.integers(p, 20)))


def points(region: list[Box]) -> set[tuple[int, int, int]]:
    return {
        (a, b.proto, p)
        for b in region
        for a in range(b.addr_first, b.addr_last + 1)
        for p in range(b.port_first, b.port_last + 1)
    }


def disjoint(region: list[Box]) -> bool:
    return sum((b.addr_last - b.addr_first + 1) * (b.port_last - b.port_first + 1) for b in region) == len(
        points(region)
    )


@given(st.lists(boxes(), max_size=6), st.lists(boxes(), max_size=6))
def test_minus_is_set_difference_and_disjoint(a: list[Box], b: list[Box]) -> None:
    region: list[Box] = []
    space.union(region, a)
    assert disjoint(region)
    assert points(region) == points(a)
    rest = space.minus(region, b)
    assert disjoint(rest)
    assert points(rest) == points(a) - points(b)


def test_box_minus_hole_in_the_middle_gives_four_pieces() -> None:
    outer = Box(4, 0, 10, 6, 0, 10)
    pieces = space.box_minus(outer, Box(4, 4, 6, 6, 4, 6))
    assert len(pieces) == 4
    assert points(pieces) == points([outer]) - points([Box(4, 4, 6, 6, 4, 6)])


def test_other_protocol_or_version_is_untouched() -> None:
    a = Box(4, 0, 10, 6, 0, 10)
    assert space.box_minus(a, Box(4, 0, 10, 17, 0, 10)) == [a]
    assert space.box_minus(a, Box(6, 0, 10, 6, 0, 10)) == [a]
