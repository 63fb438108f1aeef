"""Syslog listener throughput: messages/s over UDP and TCP on loopback.

Run: `.venv/bin/python -m bench.bench_syslog` (root not required; loopback only).
A sender child process (its own core and GIL) sends --count messages as fast
as it can; the listener runs in this process with one of two payload parsers:

- `trivial`: returns Skipped (header parsing + transport + sink hand-off only);
- `json`: json.loads of a ~3 KB NXLog-like JSON event and a LoginEvent built
  from it (what a real payload parser costs on top).

and a sink that is a bounded queue.Queue drained by another thread, as the
ingest pipeline is.  Reported: messages/s received (first to last message
handed to the sink).  TCP senders are unpaced (back-pressure limits them);
UDP senders are paced at each of --rates for --seconds and the loss at that
sustained rate is reported (what neither the socket buffer nor the listener
could take).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import socket
import statistics
import threading
import time
from datetime import UTC, datetime
from ipaddress import ip_address

from userseg.adapters.sources.syslog import SyslogListener
from userseg.events.model import EventKind, LoginEvent, ParseResult, Skipped
from userseg.events.syslog_frame import SyslogMessage, octet_counted


class _Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def event_json(i: int) -> str:
    """Roughly the size and shape of an NXLog im_msvistalog 4624 (about 3 KB)."""
    doc = {
        "EventTime": "2024-05-09 18:35:51",
        "Hostname": "DC01.example.lab",
        "Keywords": -9214364837600034816,
        "EventType": "AUDIT_SUCCESS",
        "SeverityValue": 2,
        "Severity": "INFO",
        "EventID": 4624,
        "SourceName": "Microsoft-Windows-Security-Auditing",
        "ProviderGuid": "{54849625-5478-4994-A5BA-3E3B0328C30D}",
        "Version": 2,
        "Task": 12544,
        "OpcodeValue": 0,
        "RecordNumber": 1000 + i,
        "ProcessID": 636,
        "ThreadID": 4120,
        "Channel": "Security",
        "Message": "An account was successfully logged on.\r\n\r\nSubject:\r\n\tSecurity ID:\t\tS-1-0-0" * 12,
        "Category": "Logon",
        "Opcode": "Info",
        "SubjectUserSid": "S-1-0-0",
        "SubjectUserName": "-",
        "SubjectDomainName": "-",
        "SubjectLogonId": "0x0",
        "TargetUserSid": "S-1-5-21-1-2-3-1105",
        "TargetUserName": f"user{i % 5000:04d}",
        "TargetDomainName": "EXAMPLE",
        "TargetLogonId": "0x1e3237",
        "LogonType": "3",
        "LogonProcessName": "Kerberos",
        "AuthenticationPackageName": "Kerberos",
        "WorkstationName": "-",
        "LogonGuid": "{5e5a1d4c-9b1a-4c3b-8a1e-0f0e2d3c4b5a}",
        "IpAddress": f"198.18.{(i >> 8) & 255}.{i & 255}",
        "IpPort": "49468",
        "EventReceivedTime": "2024-05-09 18:35:52",
        "SourceModuleName": "eventlog",
        "SourceModuleType": "im_msvistalog",
    }
    return json.dumps(doc)


def message(i: int) -> bytes:
    return (f"<14>May  9 18:35:51 DC01 Microsoft-Windows-Security-Auditing[636]: {event_json(i)}").encode()


def parse_trivial(msg: SyslogMessage, received: datetime) -> ParseResult:
    return Skipped("bench")


def parse_json(msg: SyslogMessage, received: datetime) -> ParseResult:
    doc = json.loads(msg.message)
    return LoginEvent(
        user=doc["TargetUserName"],
        domain=doc["TargetDomainName"],
        ip=ip_address(doc["IpAddress"]),
        time=received,
        kind=EventKind.LOGON,
        source="bench",
        event_id=doc["EventID"],
        logon_type=int(doc["LogonType"]),
    )


class QueueSink:
    """A bounded queue drained by a thread, like the ingest pipeline; records when the last item came."""

    def __init__(self, expect: int) -> None:
        self.queue: queue.Queue[object] = queue.Queue(maxsize=100_000)
        self.expect = expect
        self.count = 0
        self.first = self.last = 0.0
        self.done = threading.Event()
        self.dropped = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def emit(
        self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
    ) -> bool:
        try:
            self.queue.put(result, block=block)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _drain(self) -> None:
        while True:
            self.queue.get()
            now = time.perf_counter()
            if not self.count:
                self.first = now
            self.count += 1
            self.last = now
            if self.count >= self.expect:
                self.done.set()


def _udp_sender(address: tuple[str, int], count: int, rate: float, payloads: list[bytes]) -> None:
    """Paced in bursts of 50 with sleeps in between, so that the sender uses little CPU (in
    production it is another machine) while the average rate is exact."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.perf_counter()
    for i in range(count):
        if i % 50 == 0:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sock.sendto(payloads[i % len(payloads)], address)
    sock.close()


def _tcp_sender(address: tuple[str, int], count: int, payloads: list[bytes]) -> None:
    sock = socket.create_connection(address)
    framed = [octet_counted(p) for p in payloads]
    batch: list[bytes] = []
    for i in range(count):
        batch.append(framed[i % len(framed)])
        if len(batch) == 64:
            sock.sendall(b"".join(batch))
            batch.clear()
    sock.sendall(b"".join(batch))
    sock.close()


def run(transport: str, parser: str, count: int, rate: float = 0.0, wait: float = 30.0) -> tuple[float, int]:
    """(messages/s, messages lost) for one run."""
    payloads = [message(i) for i in range(1000)]
    sink = QueueSink(count)
    parse = parse_trivial if parser == "trivial" else parse_json
    listener = SyslogListener("bench", f"{transport}://127.0.0.1:0", sink, parse, clock=_Clock())
    listener.start()
    try:
        if transport == "udp":
            args: tuple[object, ...] = (listener.address, count, rate, payloads)
            child = multiprocessing.Process(target=_udp_sender, args=args)
        else:
            child = multiprocessing.Process(target=_tcp_sender, args=(listener.address, count, payloads))
        child.start()
        child.join()
        if not sink.done.wait(wait if transport == "tcp" else 2.0):
            # UDP: whatever did not arrive within 2 s of the sender finishing is lost.
            pass
        received = sink.count
        elapsed = max(sink.last - sink.first, 1e-9)
        return received / elapsed, count - received
    finally:
        listener.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="TCP messages per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rates", default="20000,30000,40000", help="UDP send rates (messages/s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each UDP run")
    args = parser.parse_args()
    print(f"message size: {len(message(0))} bytes; median of {args.repeat} runs")
    for kind in ("trivial", "json"):
        rates = [run("tcp", kind, args.count)[0] for _ in range(args.repeat)]
        print(
            f"tcp {kind:7s}: {statistics.median(rates):9,.0f} messages/s ({args.count:,} messages, unpaced)"
        )
    for kind in ("trivial", "json"):
        for rate in (float(r) for r in args.rates.split(",")):
            count = int(rate * args.seconds)
            results = [run("udp", kind, count, rate=rate) for _ in range(args.repeat)]
            got = statistics.median(r[0] for r in results)
            lost = statistics.median(r[1] for r in results)
            print(f"udp {kind:7s} sent at {rate:8,.0f}/s: received {got:9,.0f}/s, lost {lost / count:6.1%}")


if __name__ == "__main__":
    main()
