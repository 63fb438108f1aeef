"""Session-wide Active Directory lab: one namespace lab with real Samba DCs (imported by tests/conftest.py).

Why session scope: a DC costs ~3 s to bring up from the provision cache (~13 s on
a machine's very first run) and a joined second DC ~25 s, while most AD tests
only need *some* users and groups. Tests share the DCs and stay independent by
creating their objects under names from `unique_name` and never assuming an
empty directory. `samba_dc2` is built only when a test asks for it.

Layout (addresses are fixed so tests and configs can name them):

    c1  198.18.10.11, 198.18.10.12      dc1  198.18.20.10   (Samba DC, LAB.EXAMPLE)
    c2  198.18.10.21                    dc2  198.18.20.11   (joined DC, on demand)
                                        app  198.18.20.30   tcp 443, 8443; udp 5353
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from userseg.lab import ClientSpec, Lab, LabSpec, ServerSpec
from userseg.lab.samba import DomainSpec, SambaDC, cleanup_stale, join_dc, provision_dc
from userseg.netns import NETNS_RUN_DIR

AD_LAB_SPEC = LabSpec(
    clients=[ClientSpec("c1", ["198.18.10.11", "198.18.10.12"]), ClientSpec("c2", ["198.18.10.21"])],
    servers=[
        ServerSpec("dc1", address="198.18.20.10"),
        ServerSpec("dc2", address="198.18.20.11"),
        ServerSpec("app", address="198.18.20.30", tcp_ports=[443, 8443], udp_ports=[5353]),
    ],
)
AD_DOMAIN = DomainSpec()  # Samba's default prefork children: what a real deployment meets

_RUN = secrets.token_hex(2)
_COUNTER = itertools.count()


def unique_name(prefix: str) -> str:
    """A name no other test of any run uses: ``prefix`` + run token + counter, at most 20 characters.

    20 is AD's sAMAccountName limit for users (Samba accepts more, Windows does
    not); lower-case letters and digits only, so it is safe in DNs, filters and
    sAMAccountName alike.
    """
    if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", prefix):
        raise ValueError(f"prefix must be 1-12 lower-case letters/digits, a letter first: {prefix!r}")
    suffix = f"{_RUN}{next(_COUNTER):x}"
    return f"{prefix[: 20 - len(suffix)]}{suffix}"


def _skip_without_samba() -> None:
    missing = [t for t in ("samba", "samba-tool", "ldapadd") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing Samba tools: {', '.join(missing)}")


@pytest.fixture(scope="session")
def ad_lab() -> Iterator[Lab]:
    """The AD lab (clients c1/c2, servers dc1/dc2/app); closed, and checked gone, at session end."""
    Lab.cleanup_stale()
    cleanup_stale()  # DCs of crashed runs (their owner process is dead) only
    lab = Lab(AD_LAB_SPEC)
    try:
        yield lab
    finally:
        lab.close()
        left = [ns for ns in lab.namespaces if os.path.exists(os.path.join(NETNS_RUN_DIR, ns))]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture(scope="session")
def samba_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's DCs keep their files (dc1/, dc2/: configs, databases, logs)."""
    return tmp_path_factory.mktemp("samba")


@pytest.fixture(scope="session")
def samba_dc(ad_lab: Lab, samba_workdir: Path) -> SambaDC:
    """dc1: a started DC of LAB.EXAMPLE (admin Administrator@lab.example), stopped with the lab.

    A test that stops it must start it again (``finally: dc.start()``).
    """
    _skip_without_samba()
    return provision_dc(ad_lab, "dc1", samba_workdir / "dc1", AD_DOMAIN)


@pytest.fixture(scope="session")
def samba_dc2(ad_lab: Lab, samba_dc: SambaDC, samba_workdir: Path) -> SambaDC:
    """dc2: joined to dc1's domain, replicating both ways (built on first use, ~25 s)."""
    return join_dc(ad_lab, "dc2", samba_workdir / "dc2", samba_dc)
