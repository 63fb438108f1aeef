"""Shared pytest configuration. Lab fixtures live in tests/lab_fixtures.py."""

from __future__ import annotations

import pytest

from tests.ad_fixtures import ad_lab, samba_dc, samba_dc2, samba_workdir
from tests.lab_fixtures import make_lab, make_module_lab, netns_skip_reason

__all__ = ["ad_lab", "make_lab", "make_module_lab", "samba_dc", "samba_dc2", "samba_workdir"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `netns` where namespaces are unavailable (not root, tools missing)."""
    reason = netns_skip_reason()
    if reason is not None:
        for item in items:
            if "netns" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
