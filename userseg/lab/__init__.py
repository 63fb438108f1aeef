"""Namespace lab shared by the integration tests and the demo: topology, listeners, traffic.

Needs root (network namespaces); everything lives in namespaces the lab creates and
deletes, with addresses only from 198.18.0.0/15 and 2001:db8::/32.
"""

from userseg.lab.flows import LongConnection
from userseg.lab.servers import Listener, ListenerError
from userseg.lab.topology import (
    ClientHost,
    ClientSpec,
    Lab,
    LabCommandError,
    LabError,
    LabSpec,
    ServerHost,
    ServerSpec,
)
from userseg.lab.traffic import (
    ContinuousTraffic,
    Probe,
    Result,
    Target,
    TargetStats,
    TrafficStats,
    probe_many,
    probe_tcp,
    probe_udp,
)

__all__ = [
    "ClientHost",
    "ClientSpec",
    "ContinuousTraffic",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabSpec",
    "Listener",
    "ListenerError",
    "LongConnection",
    "Probe",
    "Result",
    "ServerHost",
    "ServerSpec",
    "Target",
    "TargetStats",
    "TrafficStats",
    "probe_many",
    "probe_tcp",
    "probe_udp",
]
