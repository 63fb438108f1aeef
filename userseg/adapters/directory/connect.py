"""Open, secure and bind an ldap3 connection to the first reachable domain controller.

Why this is more than ``Connection(auto_bind=True)``:

* **Network namespace.**  A socket belongs to the namespace of the thread that
  creates it, and ldap3 creates its socket in ``open()``; GSSAPI additionally
  talks to the KDC from inside ``bind()``.  So open, StartTLS and bind run on a
  ``NetnsWorker`` thread that lives in the namespace; the connection is then
  used from any thread (the socket keeps its namespace).  The calling thread
  never changes namespace, so an exception can never leave it stranded in
  the wrong one.
* **Failover.**  Servers are tried in order; an unreachable or misconfigured
  DC is skipped.  A refused *password* is not retried on the next DC: every DC
  would refuse it too, and each try counts toward the account's lockout.
* **Errors an admin can act on.**  ldap3 raises a dozen exception types whose
  messages embed certificate dicts; every failure becomes one DirectoryError
  naming the server URL and the problem.  The password is never part of it.
* **The root DSE is read by hand** (``Server(get_info=None)`` skips ldap3's
  schema download): defaultNamingContext, highestCommittedUSN, dsServiceName,
  and the invocationId of the NTDS Settings object, which identifies the DC's
  database (USNs are only comparable within one invocationId).
"""

from __future__ import annotations

import logging
import math
import os
import re
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldap3 import BASE, DEREF_NEVER, KERBEROS, SASL, SIMPLE, SYNC, Connection, Server, Tls
from ldap3.core import exceptions as lx

from userseg.adapters.directory import decode
from userseg.directory.model import (
    AuthMethod,
    DirectoryError,
    DirectoryServer,
    DirectorySettings,
    TlsMode,
)
from userseg.netns import NetnsWorker

log = logging.getLogger("userseg.directory")

_TLS_OK = frozenset({"TLSv1.2", "TLSv1.3"})


class Secret:
    """A password that does not print itself (repr, str, f-strings, tracebacks' locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class ConnectionLost(DirectoryError):
    """The socket died under an operation (DC stopped, network gone): a reconnect may help."""


@dataclass(frozen=True)
class RootDse:
    default_nc: str
    highest_usn: int
    ds_service_name: str
    invocation_id: str


@dataclass
class Bound:
    """A bound connection and what was learnt about its DC when it was made."""

    conn: Connection
    server: DirectoryServer
    root: RootDse

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        try:
            self.conn.unbind()
        except Exception:  # already dead: nothing to release but the socket, which unbind closed
            log.debug("unbind of %s failed", self.url, exc_info=True)


def _strip_newline(text: str) -> str:
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def load_password(settings: DirectorySettings, explicit: Secret | None) -> Secret | None:
    """The bind password, read at each connect so that a rotated file is picked up without a restart."""
    if explicit is not None:
        return explicit
    path: Path | None = settings.password_file
    if path is None and settings.password_credential:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise DirectoryError(
                f"password_credential {settings.password_credential!r} is set but $CREDENTIALS_DIRECTORY "
                "is not (run under systemd with LoadCredential=)"
            )
        path = Path(creds) / settings.password_credential
    if path is None:
        return None
    try:
        return Secret(_strip_newline(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DirectoryError(f"cannot read the directory password from {path}: {why}") from None


def expected_name(settings: DirectorySettings, server: DirectoryServer) -> str:
    return server.tls_name or settings.server_name or server.host


def build_tls(settings: DirectorySettings, server: DirectoryServer) -> Tls | None:
    """ldap3 Tls for this server; None without TLS.

    ``version=None`` makes ldap3 use ``ssl.create_default_context``, whose
    minimum is TLS 1.2 on Python >= 3.10 (checked again after the handshake,
    see _check_tls_version).  ldap3 matches the certificate against the host
    *and* ``valid_names`` itself (with a commonName fallback, which Samba's
    SAN-less certificate needs).
    """
    if server.tls is TlsMode.NONE:
        return None
    validate = ssl.CERT_REQUIRED if settings.tls_validate else ssl.CERT_NONE
    return Tls(
        validate=validate,
        ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
        valid_names=[expected_name(settings, server)],
        version=None,
    )


def _check_tls_version(conn: Connection, url: str) -> None:
    version = getattr(conn.socket, "version", lambda: None)()
    if version not in _TLS_OK:
        raise DirectoryError(f"{url}: negotiated {version or 'no TLS'}, need TLS 1.2 or newer")


_CN_RE = re.compile(r"\('(?:commonName|DNS)', '([^']*)'\)")
_VERIFY_RE = re.compile(r"certificate verify failed:?\s*([^'\"(]*)")
_SSL_TAIL_RE = re.compile(r"\s*\(_ssl\.c:\d+\)")


def describe(exc: BaseException, settings: DirectorySettings, server: DirectoryServer) -> str:
    """A one-line, secret-free description of an ldap3/socket failure."""
    text = str(exc)
    name = expected_name(settings, server)
    if "doesn't match any name" in text:
        seen = sorted(set(_CN_RE.findall(text)))
        names = ", ".join(seen) or "?"
        return f"certificate name mismatch: certificate is for {names} (expected name {name})"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        found = _VERIFY_RE.search(text)
        detail = found[1].strip() if found else ""
        return f"certificate verify failed: {detail or 'untrusted'} (expected name {name})"
    if isinstance(exc, lx.LDAPInvalidCredentialsResult):
        return f"bind refused: invalid credentials for {settings.bind_user or '(GSSAPI principal)'}"
    if isinstance(exc, lx.LDAPStrongerAuthRequiredResult) and settings.auth is AuthMethod.GSSAPI:
        return (
            f"bind refused: {exc.message or 'strongerAuthRequired'} (ldap3 cannot sign or seal SASL; "
            "over LDAPS the DC must allow it: Samba < 4.20 needs "
            "'ldap server require strong auth = allow_sasl_over_tls')"
        )
    if isinstance(exc, lx.LDAPStrongerAuthRequiredResult):
        return (
            "bind refused: the server requires an encrypted connection for this bind "
            f"({exc.message or 'strongerAuthRequired'}); use tls = ldaps or starttls"
        )
    if isinstance(exc, lx.LDAPOperationResult):
        msg = f": {exc.message}" if exc.message else ""
        return f"{exc.description}{msg}"
    if isinstance(exc, TimeoutError | lx.LDAPSocketReceiveError) and "timed out" in text:
        return "timed out"
    return _SSL_TAIL_RE.sub("", text).strip() or type(exc).__name__


def _scrub(message: str, password: Secret | None) -> str:
    """Defence in depth: a server echoing the password back must not leak it into our errors."""
    if password is not None and len(password.reveal()) >= 4:
        return message.replace(password.reveal(), "***")
    return message


def _read_root_dse(conn: Connection, url: str) -> RootDse:
    conn.search(
        "",
        "(objectClass=*)",
        BASE,
        DEREF_NEVER,
        attributes=["defaultNamingContext", "highestCommittedUSN", "dsServiceName"],
    )
    entry = _only_entry(conn, url, "root DSE")
    attrs = {k.lower(): v for k, v in entry["raw_attributes"].items()}
    try:
        default_nc = attrs["defaultnamingcontext"][0].decode()
        usn = int(attrs["highestcommittedusn"][0])
        dsa = attrs["dsservicename"][0].decode()
    except (KeyError, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise DirectoryError(f"{url}: root DSE lacks {exc}: not an Active Directory DC?") from None
    conn.search(dsa, "(objectClass=*)", BASE, DEREF_NEVER, attributes=["invocationId"])
    nt = _only_entry(conn, url, dsa)
    raw = {k.lower(): v for k, v in nt["raw_attributes"].items()}.get("invocationid") or [b""]
    try:
        invocation = str(uuid.UUID(bytes_le=raw[0]))
    except ValueError:
        raise DirectoryError(f"{url}: {dsa} has no usable invocationId") from None
    return RootDse(default_nc=default_nc, highest_usn=usn, ds_service_name=dsa, invocation_id=invocation)


def _only_entry(conn: Connection, url: str, what: str) -> dict[str, Any]:
    entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
    if not entries:
        raise DirectoryError(f"{url}: cannot read {what}")
    entry: dict[str, Any] = entries[0]
    return entry


def read_highest_usn(conn: Connection, url: str) -> int:
    conn.search("", "(objectClass=*)", BASE, DEREF_NEVER, attributes=["highestCommittedUSN"])
    raw = {k.lower(): v for k, v in _only_entry(conn, url, "root DSE")["raw_attributes"].items()}
    try:
        return int(raw["highestcommittedusn"][0])
    except (KeyError, IndexError, ValueError):
        raise DirectoryError(f"{url}: root DSE has no highestCommittedUSN") from None


class Connector:
    """Makes bound connections for one directory configuration (one per reader or watcher)."""

    def __init__(self, settings: DirectorySettings, netns: str | None, password: Secret | None) -> None:
        if not settings.servers:
            raise DirectoryError("no directory servers configured")
        self.settings = settings
        self.netns = netns
        self._password = password
        self._worker: NetnsWorker | None = None
        self._worker_lock = threading.Lock()  # a full read opens extra connections from several threads

    def __repr__(self) -> str:
        return f"Connector(servers={[s.url for s in self.settings.servers]}, netns={self.netns!r})"

    def _run_in_netns(self, fn: Any) -> Any:
        if self.netns is None:
            return fn()
        with self._worker_lock:
            if self._worker is None:
                self._worker = NetnsWorker(self.netns, thread_name=f"ldap-{self.netns}")
            worker = self._worker
        return worker.call(fn)

    def connect(self, receive_timeout: float | None = None) -> Bound:
        """Bind to the first server that accepts us; DirectoryError naming every failure otherwise."""
        password = load_password(self.settings, self._password)
        errors: list[str] = []
        for server in self.settings.servers:
            try:
                return self._connect_one(server, password, receive_timeout)
            except _AuthRefused as exc:
                raise DirectoryError(str(exc)) from None
            except DirectoryError as exc:
                errors.append(str(exc))
                log.info("directory server unusable: %s", exc)
        if len(errors) == 1:
            raise DirectoryError(errors[0])
        raise DirectoryError("no directory server reachable: " + "; ".join(errors))

    def connect_to(self, server: DirectoryServer) -> Bound:
        """Bind to exactly `server`, no failover (a full read's extra connections must reach its DC)."""
        try:
            return self._connect_one(server, load_password(self.settings, self._password), None)
        except _AuthRefused as exc:
            raise DirectoryError(str(exc)) from None

    def _connection(
        self, server: DirectoryServer, password: Secret | None, timeout: float | None
    ) -> Connection:
        settings = self.settings
        ldap_server = Server(
            server.host,
            port=server.port,
            use_ssl=server.tls is TlsMode.LDAPS,
            tls=build_tls(settings, server),
            get_info=None,
            connect_timeout=settings.connect_timeout,
        )
        common: dict[str, Any] = {
            "client_strategy": SYNC,
            "raise_exceptions": True,
            "auto_range": False,  # the reader does range retrieval itself (errors must not truncate)
            "auto_referrals": False,
            "read_only": True,
            # an int: ldap3 packs it into SO_RCVTIMEO with struct "LL", which rejects floats
            "receive_timeout": max(1, math.ceil(settings.operation_timeout if timeout is None else timeout)),
            "return_empty_attributes": False,
        }
        if settings.auth is AuthMethod.GSSAPI:
            _require_gssapi(server)
            return Connection(
                ldap_server,
                authentication=SASL,
                sasl_mechanism=KERBEROS,
                sasl_credentials=(expected_name(settings, server), None, None),
                **common,
            )
        if not settings.bind_user:
            raise DirectoryError(f"{server.url}: simple bind needs bind_user")
        if password is None or password.reveal() == "":
            # An empty password makes an LDAP simple bind anonymous: never send one.
            raise DirectoryError(f"{server.url}: no password for {settings.bind_user} (set password_file)")
        return Connection(
            ldap_server, user=settings.bind_user, password=password.reveal(), authentication=SIMPLE, **common
        )

    def _connect_one(self, server: DirectoryServer, password: Secret | None, timeout: float | None) -> Bound:
        url = server.url
        conn = self._connection(server, password, timeout)
        decode.install(conn)  # search entries without ldap3's second, unused decoding (decode.py)

        def establish() -> RootDse:
            conn.open(read_server_info=False)
            if server.tls is TlsMode.STARTTLS:
                conn.start_tls(read_server_info=False)
            if server.tls is not TlsMode.NONE:
                _check_tls_version(conn, url)
            conn.bind(read_server_info=False)
            return _read_root_dse(conn, url)

        try:
            root = self._run_in_netns(establish)
        except DirectoryError as exc:
            _quiet_unbind(conn)
            raise DirectoryError(_scrub(str(exc), password)) from None
        except lx.LDAPInvalidCredentialsResult as exc:
            _quiet_unbind(conn)
            raise _AuthRefused(f"{url}: {describe(exc, self.settings, server)}") from None
        except Exception as exc:  # ldap3, socket, ssl, and gssapi's own GSSError
            _quiet_unbind(conn)
            raise DirectoryError(_scrub(f"{url}: {describe(exc, self.settings, server)}", password)) from None
        log.debug("bound to %s (%s)", url, root.ds_service_name)
        return Bound(conn=conn, server=server, root=root)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


class _AuthRefused(DirectoryError):
    """Credentials refused: stop failing over (every DC of the domain would say the same)."""


def _quiet_unbind(conn: Connection) -> None:
    try:
        conn.unbind()
    except Exception:
        log.debug("unbind after a failed connect failed", exc_info=True)


def _require_gssapi(server: DirectoryServer) -> None:
    """ldap3's GSSAPI needs the `gssapi` package, and on LDAPS `cryptography` for channel binding."""
    try:
        import gssapi  # noqa: F401
    except ImportError:
        raise DirectoryError(
            f"{server.url}: auth = gssapi needs the Python package 'gssapi' (pip install gssapi)"
        ) from None
    if server.tls is TlsMode.LDAPS:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            raise DirectoryError(
                f"{server.url}: GSSAPI over LDAPS needs the Python package 'cryptography' (channel binding)"
            ) from None
