"""The gateway's own addresses, so revocation never cuts traffic to the gateway itself
(that traffic is delivered locally, not forwarded, and so is not ours to police)."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute

from userseg.model import IPAddress
from userseg.netns import NetnsWorker


class LocalAddresses:
    def __init__(self, netns: str | None) -> None:
        self._worker = NetnsWorker(netns, thread_name="local-addresses")

    def __call__(self) -> set[IPAddress]:
        return self._worker.call(_read)

    def close(self) -> None:
        self._worker.close()


def _read() -> set[IPAddress]:
    with IPRoute() as ipr:
        return {ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}
