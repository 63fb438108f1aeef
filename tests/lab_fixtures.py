"""Lab fixtures shared by every test that needs real namespaces (imported by tests/conftest.py).

Why a factory instead of one ready-made lab: each test suite wants its own shape
(users as client aliases, apps as server ports). The factory guarantees that every
lab it built is torn down and that no namespace of ours is left afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from userseg.lab import Lab, LabSpec
from userseg.netns import NETNS_RUN_DIR

MakeLab = Callable[[LabSpec], Lab]


def netns_skip_reason() -> str | None:
    """Why tests marked `netns` cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    missing = [tool for tool in ("ip", "nft", "conntrack") if shutil.which(tool) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def _factory() -> Iterator[MakeLab]:
    Lab.cleanup_stale()  # leftovers of crashed runs (owner dead) only
    labs: list[Lab] = []

    def make(spec: LabSpec) -> Lab:
        lab = Lab(spec)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()
    leftovers = [
        ns for lab in labs for ns in lab.namespaces if os.path.exists(os.path.join(NETNS_RUN_DIR, ns))
    ]
    assert not leftovers, f"namespaces left behind: {leftovers}"


@pytest.fixture
def make_lab() -> Iterator[MakeLab]:
    """Build labs for one test; all are closed (and checked gone) when the test ends."""
    yield from _factory()


@pytest.fixture(scope="module")
def make_module_lab() -> Iterator[MakeLab]:
    """Like make_lab, shared by a module: one build for many read-mostly tests."""
    yield from _factory()
