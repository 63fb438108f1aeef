from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab_fixtures import MakeLab
from tests.scenario.world import LAB_SPEC, Gateway
from userseg.lab import Lab


@pytest.fixture(scope="module")
def lab(make_module_lab: MakeLab) -> Lab:
    return make_module_lab(LAB_SPEC)


@pytest.fixture
def gateway(lab: Lab) -> Iterator[Gateway]:
    """A fresh enforcer per test; the table is removed afterwards so tests stay independent."""
    gw = Gateway(lab)
    try:
        yield gw
    finally:
        gw.close()
        lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
        lab.run("gateway", ["conntrack", "-F"], check=False)
