"""The real firewall: `table inet userseg` through libnftables' JSON API.

One persistent `nftables.Nftables()` context, created on a NetnsWorker thread so
it lives in the gateway's network namespace (or the current one): spawning
`nft` costs milliseconds per call, the library call ~0.06 ms.  Every
transaction is one `json_cmd` batch, which the kernel applies atomically or not
at all; only the table `inet userseg` is ever named in what we send.

The exception is the bulk phase of a large plan: its map (and destination set)
elements go to the kernel as raw nfnetlink batches (nft_elements), because
libnftables spends seconds of userspace time per quarter million elements.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

import nftables

from userseg.adapters.firewall.nft_elements import WRITABLE_KINDS, NetlinkWriteError, NfTablesWriter
from userseg.adapters.firewall.nft_netlink import NetlinkReadError, NfTablesReader
from userseg.adapters.firewall.nft_parse import InconsistentListing, NftParseError, parse_table
from userseg.adapters.firewall.nft_render import render_ops, split_transactions, transaction
from userseg.core.table import TABLE_FAMILY, TABLE_NAME, ActualState, AddElements, DeleteElements, Op, Plan
from userseg.netns import NetnsWorker
from userseg.ports import FirewallError

_MISSING = "No such file or directory"
_READ_ATTEMPTS = 5
Reader = Literal["netlink", "json"]
BulkWriter = Literal["netlink", "json"]


def _new_context() -> Any:
    """A libnftables context printing JSON; must run on the namespace thread."""
    ctx = nftables.Nftables()
    ctx.set_json_output(True)
    ctx.set_handle_output(False)  # handles are noise for us and cost bytes at 250k elements
    ctx.set_stateless_output(True)  # no counter/limit state in listings
    return ctx


class NftFirewall:
    """Firewall port over libnftables; thread-safe (all calls run on one worker thread)."""

    def __init__(
        self,
        netns: str | None = None,
        chunk_elements: int = 20000,
        reader: Reader = "netlink",
        bulk_writer: BulkWriter = "netlink",
    ) -> None:
        """`reader`: "netlink" dumps the table over netlink (fast, lean; see nft_netlink),
        "json" lists it through libnftables and nft_parse (the reference, ~3x slower
        and ~6x the memory at 100k elements).
        `bulk_writer`: how the bulk phase of a plan too big for one transaction
        writes map and destination-set elements: "netlink" sends nfnetlink batches
        itself (nft_elements, ~10x faster), "json" goes through libnftables like
        everything else (the reference)."""
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be at least 1, not {chunk_elements}")
        if reader not in ("netlink", "json"):
            raise ValueError(f"reader must be 'netlink' or 'json', not {reader!r}")
        if bulk_writer not in ("netlink", "json"):
            raise ValueError(f"bulk_writer must be 'netlink' or 'json', not {bulk_writer!r}")
        self.netns = netns
        self.chunk_elements = chunk_elements
        self.reader = reader
        self.bulk_writer = bulk_writer
        self.transactions_run = 0  # committed batches, for tests and metrics
        self._worker = NetnsWorker(netns, thread_name=f"nft-{netns or 'self'}")
        self._ctx: Any = self._worker.call(_new_context)
        self._netlink: NfTablesReader | None = (
            self._worker.call(NfTablesReader) if reader == "netlink" else None
        )
        self._writer: NfTablesWriter | None = (
            self._worker.call(NfTablesWriter) if bulk_writer == "netlink" else None
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------ reading

    def read(self) -> ActualState:
        """Read back our table; ActualState.empty() when it does not exist."""
        netlink = self._netlink
        if netlink is None:
            return self._read_json()
        with self._lock:
            self._context()  # refuses when closed
            try:
                return self._worker.call(lambda: netlink.read(lambda: datetime.now(UTC)))
            except NetlinkReadError as exc:
                raise FirewallError(f"reading table {TABLE_FAMILY} {TABLE_NAME} failed: {exc}") from exc

    def _read_json(self) -> ActualState:
        """`list table` through libnftables, parsed by nft_parse.

        Map element expiries come back as whole seconds, truncated; anchoring
        them half a second after the middle of the listing centres that error.
        """
        cmd = f"list table {TABLE_FAMILY} {TABLE_NAME}"
        problem = ""
        for _attempt in range(_READ_ATTEMPTS):
            with self._lock:
                ctx = self._context()
                t0 = time.monotonic()
                wall0 = datetime.now(UTC)
                rc, out, err = self._worker.call(partial(ctx.cmd, cmd))
                elapsed = time.monotonic() - t0
            if rc != 0:
                if _MISSING in err:
                    return ActualState.empty()
                raise FirewallError(f"nft {cmd!r} failed: {err.strip() or f'return code {rc}'}")
            read_time = wall0 + timedelta(seconds=elapsed / 2 + 0.5)
            try:
                doc = json.loads(out)
                del out  # the text is as big as the document; free it before parsing
                return parse_table(doc, read_time)
            except InconsistentListing as exc:
                problem = str(exc)
            except (ValueError, NftParseError) as exc:
                raise FirewallError(f"cannot understand the listing of our table: {exc}") from exc
        raise FirewallError(f"table {TABLE_FAMILY} {TABLE_NAME} kept changing while being read: {problem}")

    def _context(self) -> Any:
        if self._ctx is None:
            raise FirewallError("this NftFirewall is closed")
        return self._ctx

    # ------------------------------------------------------------ applying

    def apply(self, plan: Plan) -> None:
        """Apply the plan: one transaction, or prelude / bulk chunks / main when large.

        A refused transaction raises FirewallError with the kernel's message; the
        kernel is unchanged for that transaction (earlier chunks of a split plan stay).
        """
        with self._lock:
            start = time.monotonic()
            for index, (netlink, ops) in enumerate(self._transactions(plan)):
                # Timeouts are relative to when each transaction is sent: a big plan
                # takes seconds, and the kernel starts counting on arrival.
                now = plan.now + timedelta(seconds=time.monotonic() - start)
                if netlink:
                    self._apply_netlink(index, ops, now)
                else:
                    self._apply_json(index, ops, now)

    def _transactions(self, plan: Plan) -> Iterator[tuple[bool, tuple[Op, ...]]]:
        """(through netlink?, ops) of each transaction, in order.

        A plan small enough for one transaction stays one libnftables transaction
        (a netlink batch cannot carry its rules, and splitting it would lose
        atomicity).  A large one runs as split_transactions cuts it, except that
        the bulk additions the netlink writer can encode go last, in their own
        chunks, so libnftables never has to cache a quarter million elements, and
        a main made only of such element changes is one netlink batch.
        """
        writer = self._writer
        if writer is not None and plan.element_count() <= self.chunk_elements and _elements_only(plan):
            # The fast path (a login, a logoff): libnftables 1.0.6 re-fetches the
            # table's elements into its cache for every element command once the
            # generation moved, ~30 ms at 100k mappings; one netlink batch is
            # still a single atomic transaction and costs a fraction of a millisecond.
            yield True, plan.ops()
            return
        if writer is None or plan.element_count() <= self.chunk_elements:
            yield from ((False, ops) for ops in split_transactions(plan, self.chunk_elements))
            return
        fast = tuple(op for op in plan.bulk if op.kind in WRITABLE_KINDS)
        slow = tuple(op for op in plan.bulk if op.kind not in WRITABLE_KINDS)
        if plan.prelude:
            yield False, plan.prelude
        yield from (
            (False, ops) for ops in split_transactions(Plan(plan.now, bulk=slow), self.chunk_elements)
        )
        yield from ((True, ops) for ops in split_transactions(Plan(plan.now, bulk=fast), self.chunk_elements))
        if plan.main:
            # main must stay one transaction; when it only replaces elements (every user's
            # expiry or comment moved, e.g. the first sync after an upgrade) one netlink batch
            # is: libnftables took ~25 s and 1.2 GB for 250k replacements, long enough for the
            # timeouts it wrote to start late by more than the diff's tolerance.
            yield writer is not None and _writable_elements(plan.main), plan.main

    def _apply_json(self, index: int, ops: tuple[Op, ...], now: datetime) -> None:
        commands = render_ops(ops, now)  # built per transaction: bounded memory
        if not commands:
            return
        doc = transaction(commands)
        del commands
        rc, _out, err = self._worker.call(partial(self._context().json_cmd, doc))
        del doc
        if rc != 0:
            raise FirewallError(
                f"nft refused transaction {index + 1} of plan "
                f"({len(ops)} ops: {_describe(ops)}): {err.strip() or f'return code {rc}'}"
            )
        self.transactions_run += 1

    def _apply_netlink(self, index: int, ops: tuple[Op, ...], now: datetime) -> None:
        writer = self._writer
        if writer is None:
            raise FirewallError("this NftFirewall is closed")
        adds = [op for op in ops if isinstance(op, AddElements | DeleteElements)]
        try:
            written = self._worker.call(partial(writer.write, adds, now))
        except NetlinkWriteError as exc:
            raise FirewallError(
                f"netlink transaction {index + 1} of plan failed "
                f"({sum(len(op.elements) for op in adds)} elements in {len(adds)} sets): {exc.strerror}"
            ) from exc
        if written:
            self.transactions_run += 1

    def close(self) -> None:
        """Release the libnftables context and stop the namespace thread."""
        with self._lock:
            self._ctx = None  # Nftables.__del__ frees the context
            netlink, self._netlink = self._netlink, None
            if netlink is not None:
                self._worker.call(netlink.close)
            writer, self._writer = self._writer, None
            if writer is not None:
                self._worker.call(writer.close)
            self._worker.close()

    def __enter__(self) -> NftFirewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _elements_only(plan: Plan) -> bool:
    """True when every op adds or deletes elements of sets the netlink writer can encode."""
    return bool(plan.ops()) and _writable_elements(plan.ops())


def _writable_elements(ops: tuple[Op, ...]) -> bool:
    return all(isinstance(op, AddElements | DeleteElements) and op.kind in WRITABLE_KINDS for op in ops)


def _describe(ops: tuple[object, ...]) -> str:
    names: dict[str, int] = {}
    for op in ops:
        names[type(op).__name__] = names.get(type(op).__name__, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in names.items())
