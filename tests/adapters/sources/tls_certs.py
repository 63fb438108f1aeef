"""Throwaway PKI for TLS tests, made with the `openssl` CLI: a CA, a server certificate for
127.0.0.1, a client certificate signed by the CA, and a self-signed client certificate the
server must not trust.  EC P-256 keys: generating them takes milliseconds."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # self-signed: not issued by the CA
    rogue_key: Path
    encrypted_key: Path  # the server key with a passphrase
    other_key: Path  # a key that matches none of the certificates


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _issue(directory: Path, name: str, subject: str, extensions: str) -> None:
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory)
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    _openssl(
        "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=userseg test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _issue(
        directory, "server", "/CN=localhost",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    _issue(
        directory,
        "client",
        "/CN=dc01.example.lab",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    _openssl(
        "req", "-x509", *_EC, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
        "-subj", "/CN=dc01.example.lab", cwd=directory,
    )  # fmt: skip
    _openssl(
        "pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "enc.key", cwd=directory
    )
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-out",
        "other.key",
        cwd=directory,
    )
    return Pki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        rogue_cert=directory / "rogue.pem",
        rogue_key=directory / "rogue.key",
        encrypted_key=directory / "enc.key",
        other_key=directory / "other.key",
    )
