"""Builds and runs login ingestion from the [ingest] config: the pipeline and every source.

The composition root for one concern: it wires the Samba log follower, the
syslog listeners and the HTTP push API to one IngestPipeline, opens the
network listeners in the gateway's namespace (where clients and DCs reach
it), and stops them in the safe order: sources first, then the pipeline, which
commits everything they delivered.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from userseg.events.model import ParseResult
from userseg.events.pipeline import IngestPipeline, KernelMappings, load_book
from userseg.events.settings import IngestSettings, SourceKind, SourceSettings
from userseg.model import Mapping
from userseg.netns import NetnsWorker
from userseg.ports import Clock
from userseg.store import Store

log = logging.getLogger("userseg.ingest")


class IngestError(RuntimeError):
    """A source could not start (port in use, unreadable certificate...): named in the message."""


class _Source(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float = ...) -> object: ...


@dataclass(frozen=True)
class SourceStatus:
    name: str
    kind: str
    where: str  # path or listening address
    stats: dict[str, Any]


class IngestService:
    def __init__(
        self,
        settings: IngestSettings,
        store: Store,
        kernel: KernelMappings | None,
        clock: Clock,
        *,
        netns: str | None = None,
        on_full_sync_needed: Callable[[], None] = lambda: None,
        mappings: Iterable[Mapping] | None = None,
    ) -> None:
        """`mappings`: the store's active mappings if the caller has just read them (see load_book)."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.netns = netns
        book = load_book(store, settings.rules, clock.now(), mappings)
        self._states = store.source_states()
        self.pipeline = IngestPipeline(
            store,
            book,
            kernel,
            clock,
            queue_size=settings.queue_size,
            on_full_sync_needed=on_full_sync_needed,
            counters={name: st.counters for name, st in self._states.items()},
        )
        self._sources: list[tuple[SourceSettings, _Source]] = []
        self._api: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the pipeline, then every source; on any failure stop what started and raise."""
        self.pipeline.start()
        try:
            positions = {name: s.position for name, s in self._states.items()}
            worker = NetnsWorker(self.netns, thread_name="userseg-ingest-bind") if self.netns else None
            try:
                for settings in self.settings.sources:
                    if settings.kind is SourceKind.HTTP:
                        continue
                    source = self._build(settings, positions.get(settings.name))
                    _start_in(worker, source)
                    self._sources.append((settings, source))
                self.pipeline.add_stats(self._listener_counters)
                if any(s.kind is SourceKind.HTTP for s in self.settings.sources):
                    self._api = self._build_api()
                    _start_in(worker, self._api)
            finally:
                if worker is not None:
                    worker.close()
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        for _, source in reversed(self._sources):
            try:
                source.stop()
            except Exception:
                log.exception("stopping a login source failed")
        self._sources.clear()
        if self._api is not None:
            self._api.stop()
            self._api = None
        self.pipeline.stop()

    # ------------------------------------------------------------------ building

    def _build(self, s: SourceSettings, position: str | None) -> _Source:
        from userseg.events.formats import parser

        def wall() -> datetime:
            return self.clock.now()

        if s.kind is SourceKind.SAMBA_LOG:
            from userseg.adapters.sources.samba_log import SambaLogSource

            assert s.samba is not None
            return SambaLogSource(
                s.name,
                s.samba.path,
                self.pipeline,
                parser("samba", source=s.name),
                position=position,
                clock=wall,
                start_at_end=s.samba.start_at_end,
            )
        if s.kind is SourceKind.SYSLOG:
            from userseg.adapters.sources.syslog import SyslogListener, TlsServerSettings
            from userseg.events.syslog_frame import SyslogMessage

            assert s.syslog is not None
            parse_payload = parser(s.syslog.format, source=s.name)

            def parse_syslog(msg: SyslogMessage, received: datetime) -> ParseResult:
                return parse_payload(msg.message, received)

            tls = s.syslog.tls
            return SyslogListener(
                s.name,
                s.syslog.url,
                self.pipeline,
                parse_syslog,
                clock=self.clock,
                allowed_senders=s.syslog.allowed_senders,
                tls=TlsServerSettings(tls.cert, tls.key, tls.client_ca) if tls is not None else None,
                max_connections=s.syslog.max_connections,
            )
        raise IngestError(f"source {s.name}: type {s.kind.value} is not built here")

    def _build_api(self) -> Any:
        from userseg.web.push import push_blueprint
        from userseg.web.server import ApiServer, make_push_app
        from userseg.web.tokens import TokenBook

        api = self.settings.api
        assert api is not None
        http = [s for s in self.settings.sources if s.kind is SourceKind.HTTP and s.http is not None]
        tokens = TokenBook({s.http.token_hash: s.name for s in http if s.http is not None})
        senders = {
            s.name: s.http.allowed_senders for s in http if s.http is not None and s.http.allowed_senders
        }
        blueprint = push_blueprint(
            tokens,
            self.pipeline,
            clock=self.clock.now,
            max_body=api.max_body,
            max_events=api.max_events,
            allowed_senders=senders or None,
        )
        app = make_push_app(blueprint, max_body=api.max_body)
        return ApiServer(app, api.host, api.port, tls=api.tls)

    # ------------------------------------------------------------------ status

    def status(self) -> list[SourceStatus]:
        out = []
        for s, source in self._sources:
            where = str(s.samba.path) if s.samba is not None else s.syslog.url if s.syslog is not None else ""
            stats = getattr(source, "stats", None)
            found = stats() if callable(stats) else None
            is_record = dataclasses.is_dataclass(found) and not isinstance(found, type)
            doc = dataclasses.asdict(found) if is_record else {}  # type: ignore[arg-type]
            out.append(SourceStatus(s.name, s.kind.value, where, doc))
        return out

    def _listener_counters(self) -> dict[str, dict[str, int]]:
        """What the syslog listeners count before anything reaches the pipeline."""
        out: dict[str, dict[str, int]] = {}
        for s, source in self._sources:
            if s.kind is SourceKind.SYSLOG:
                st = source.stats()  # type: ignore[attr-defined]
                out[s.name] = {
                    "not_allowed": st.not_allowed,
                    "tls_failures": st.tls_failures,
                    "connections": st.connections,
                    "kernel_dropped": st.kernel_dropped,
                }
        return out

    @property
    def api_address(self) -> tuple[str, int] | None:
        if self._api is None:
            return None
        host, port = self._api.address
        return (str(host), int(port))


def _start_in(worker: NetnsWorker | None, source: Any) -> None:
    """Open the source's sockets in the gateway's namespace (files are the same everywhere)."""
    try:
        if worker is None:
            source.start()
        else:
            worker.call(source.start)
    except (OSError, RuntimeError) as exc:  # SyslogListenerError, ApiServerError are RuntimeErrors
        raise IngestError(f"login source {getattr(source, 'name', 'push API')}: {exc}") from exc
