"""Read `table inet userseg` straight from nf_tables over netlink.

Why not libnftables' `list table`: nftables 1.0.6 fetches every element of every
set into its cache for *any* list command and then prints it as JSON, so
reading 100k map elements took ~3 s of library time and left ~260 MB of
process memory behind, before Python parsed 10 MB of JSON.  Dumping the objects
ourselves costs only the kernel's share, keeps memory proportional to what we
return, gives expiries in milliseconds, and lets us check the snapshot:

- the ruleset generation id is read before and after, and NLM_F_DUMP_INTR
  flags a dump that raced a commit;
- a hash set dump restarts its walk for every 32 KB message and skips by
  count, so a rehash in between (e.g. just after a bulk load) repeats some
  elements and misses others: a key seen twice, or fewer distinct keys than
  the set's element count, means "read again".

Reading lives here: the request/dump protocol and the consistency checks.
Turning the dumped attributes into sets, elements and chains is nft_decode.py;
the message framing, shared with the element writer, is nfnetlink.py.
Structural writes go through libnftables (nft.py), whose JSON is the
documented interface, and bulk element loads through nft_elements.py.
nft_parse.py decodes the same table from JSON and the tests check that both
readers agree.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from userseg.adapters.firewall.nfnetlink import BE32, HDR, NETLINK_NETFILTER, NFPROTO_INET, attrs, nla
from userseg.adapters.firewall.nft_decode import (
    InconsistentDump,
    Unrecognised,
    classify_set,
    decode_chains,
    decode_elements,
)
from userseg.adapters.firewall.nft_parse import ForeignSetSpec
from userseg.core.table import TABLE_NAME, ActualState, SetSpec

_NFNL_SUBSYS_NFTABLES = 10
_GETTABLE, _GETCHAIN, _GETRULE, _GETSET, _GETSETELEM, _GETGEN = 1, 4, 7, 10, 13, 16
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_NLMSG_ERROR, _NLMSG_DONE = 2, 3


class NetlinkReadError(OSError):
    """The kernel refused a request, or the snapshot kept changing while we read it."""


class NfTablesReader:
    """A netlink socket for dumping one nf_tables table; create and use it on one thread.

    The socket belongs to the network namespace of the thread that creates it,
    so NftFirewall builds this on its NetnsWorker thread.
    """

    def __init__(self, table: str = TABLE_NAME, family: int = NFPROTO_INET) -> None:
        self.table = table
        self.family = family
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self._sock.bind((0, 0))
        self._buf = bytearray(1 << 20)  # dump messages are at most 32 KB; generous for safety
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    # ------------------------------------------------------------ protocol

    def _request(
        self, msg: int, body_attrs: list[tuple[int, bytes]], dump: bool, stamps: list[float] | None = None
    ) -> tuple[list[bytes], bool]:
        """Send one request; return the payloads (after nfgenmsg) and whether a dump was interrupted.

        Replies are matched by sequence number, so leftovers of a request that
        was abandoned half-way (an exception mid-dump) are skipped, never
        mistaken for this one's.
        """
        self._seq += 1
        seq = self._seq
        body = struct.pack("=BBH", self.family, 0, 0) + b"".join(nla(k, v) for k, v in body_attrs)
        flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else 0)
        self._sock.send(
            HDR.pack(HDR.size + len(body), (_NFNL_SUBSYS_NFTABLES << 8) | msg, flags, seq, 0) + body
        )
        out: list[bytes] = []
        interrupted = False
        error = 0
        view = memoryview(self._buf)
        while True:
            n = self._sock.recv_into(view)
            received = time.monotonic()
            off = 0
            while off + HDR.size <= n:
                length, mtype, mflags, mseq, _pid = HDR.unpack_from(self._buf, off)
                if length < HDR.size:
                    raise NetlinkReadError(errno.EBADMSG, "malformed netlink message from nf_tables")
                if mseq == seq:
                    if mflags & _NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == _NLMSG_DONE:
                        return self._finish(out, interrupted, error, msg)
                    if mtype == _NLMSG_ERROR:
                        error = -struct.unpack_from("=i", self._buf, off + HDR.size)[0]
                        return self._finish(out, interrupted, error, msg)
                    out.append(bytes(self._buf[off + HDR.size + 4 : off + length]))
                    if stamps is not None:
                        stamps.append(received)
                    if not dump:
                        return self._finish(out, interrupted, error, msg)
                off += (length + 3) & ~3

    @staticmethod
    def _finish(out: list[bytes], interrupted: bool, error: int, msg: int) -> tuple[list[bytes], bool]:
        if error:
            raise NetlinkReadError(error, f"nf_tables request {msg} failed: {os.strerror(error)}")
        return out, interrupted

    def generation(self) -> int:
        (payload,), _ = self._request(_GETGEN, [], dump=False)
        return int(BE32.unpack(attrs(payload)[1])[0])

    # ------------------------------------------------------------ reading

    def read(self, clock: Callable[[], datetime], attempts: int = 5) -> ActualState:
        """A consistent snapshot of the table (ActualState.empty() when absent)."""
        last = ""
        for _ in range(attempts):
            try:
                return self._read_once(clock)
            except InconsistentDump as exc:
                last = str(exc)
        raise NetlinkReadError(errno.EAGAIN, f"table {self.table} kept changing while being read: {last}")

    def _read_once(self, clock: Callable[[], datetime]) -> ActualState:
        name = self.table.encode() + b"\0"
        gen = self.generation()
        try:
            self._request(_GETTABLE, [(1, name)], dump=False)
        except NetlinkReadError as exc:
            if exc.errno == errno.ENOENT:
                return ActualState.empty()
            raise
        set_msgs, intr1 = self._request(_GETSET, [(1, name)], dump=True)
        chain_msgs, intr2 = self._request(_GETCHAIN, [(1, name)], dump=True)
        rule_msgs, intr3 = self._request(_GETRULE, [(1, name)], dump=True)
        sets: dict[str, SetSpec] = {}
        elements: dict[str, frozenset[object]] = {}
        for payload in set_msgs:
            a = attrs(payload)
            if a.get(1) != name:  # the kernel filters set dumps by table; be sure anyway
                continue
            spec, decode_as = classify_set(a)
            sets[spec.name] = spec
            if decode_as is None:
                continue
            # Each message is stamped when it arrives: a 250k-element dump takes
            # seconds, and a remaining timeout means "from the moment it was dumped".
            t0 = time.monotonic()
            wall = clock()
            stamps: list[float] = []
            msgs, intr = self._request(
                _GETSETELEM, [(1, name), (2, spec.name.encode() + b"\0")], dump=True, stamps=stamps
            )
            times = [wall + timedelta(seconds=t - t0) for t in stamps]
            if intr:
                raise InconsistentDump(f"dump of set {spec.name} interrupted")
            expected = BE32.unpack(a[20])[0] if 20 in a else None  # NFTA_SET_COUNT, kernel >= 6.16
            try:
                elements[spec.name] = decode_elements(decode_as, msgs, times, expected)
            except Unrecognised as exc:
                sets[spec.name] = ForeignSetSpec(spec.name, decode_as, f"unrecognised element: {exc}")
        if intr1 or intr2 or intr3 or self.generation() != gen:
            raise InconsistentDump("the ruleset changed during the read")
        return ActualState(True, sets, elements, decode_chains(name, chain_msgs, rule_msgs))
