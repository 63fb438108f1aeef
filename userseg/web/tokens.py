"""Bearer tokens of the push API: generated here, stored only as hashes, checked in constant time.

A token is `usp_` followed by 32 random bytes (256 bits) in unpadded
base64url.  Because it is machine-generated with that much entropy, a plain
SHA-256 of it is as safe to store as the output of a slow KDF: slow hashes
(bcrypt, scrypt, Argon2) exist to make guessing *low-entropy* passwords
expensive, and nobody can enumerate 2**256 candidates however fast each hash
is.  A fast hash also keeps every API request cheap, which a per-request
bcrypt (~100 ms of CPU, by design) would not; that would turn the API itself
into a denial-of-service lever.  The prefix lets secret scanners recognise a
leaked token.

The config file holds `token_hash = "sha256:<hex>"`; the token itself is
shown once, when it is created, and exists nowhere else on the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

__all__ = ["TOKEN_PREFIX", "TokenBook", "TokenBookError", "bearer_token", "new_token", "token_hash"]

TOKEN_PREFIX = "usp_"
TOKEN_BYTES = 32
HASH_PREFIX = "sha256:"
HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9._~+/-]{1,1024}=*) *")  # RFC 6750 token68


class TokenBookError(ValueError):
    """The configured token hashes cannot be used; the message names the source, never a secret."""


def new_token() -> str:
    """A fresh bearer token (`usp_` + 43 base64url characters): show it once, store its hash."""
    raw = secrets.token_bytes(TOKEN_BYTES)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token_hash(token: str) -> str:
    """`sha256:<64 lower-case hex digits>` of the token's UTF-8 bytes: what the config stores."""
    return HASH_PREFIX + _digest(token).hex()


def _digest(token: str) -> bytes:
    # surrogatepass: a presented header can hold anything; hashing must never raise on it.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


_EMPTY_DIGEST = _digest("")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None when absent or malformed
    (another scheme, two tokens, characters a token68 cannot hold)."""
    match = _BEARER.fullmatch(header) if header else None
    return match.group(1) if match else None


class TokenBook:
    """Which source a presented token belongs to.

    `entries` maps a token hash (as produced by `token_hash`) to a source
    name.  Every entry is checked at construction: a malformed hash, the hash
    of the empty token or one hash used for two sources (a request could not
    be attributed) is a TokenBookError naming the source.

    Neither the tokens nor the hashes appear in `repr`/`str`: only the
    source names do.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, str]) -> None:
        parsed: list[tuple[bytes, str]] = []
        owner: dict[bytes, str] = {}
        for stored, source in entries.items():
            if not isinstance(source, str) or not source.strip():
                raise TokenBookError("a token hash is configured without a source name")
            if not isinstance(stored, str) or not HASH_RE.fullmatch(stored):
                raise TokenBookError(
                    f"token hash of source {source!r} is malformed: "
                    "expected 'sha256:' followed by 64 lower-case hex digits"
                )
            digest = bytes.fromhex(stored[len(HASH_PREFIX) :])
            if digest == _EMPTY_DIGEST:
                raise TokenBookError(f"token hash of source {source!r} is the hash of an empty token")
            if digest in owner:
                raise TokenBookError(f"sources {owner[digest]!r} and {source!r} have the same token hash")
            owner[digest] = source
            parsed.append((digest, source))
        self._entries: tuple[tuple[bytes, str], ...] = tuple(parsed)

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(source for _, source in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, presented: str) -> str | None:
        """The source whose token this is, or None.

        Every stored hash is compared, with `hmac.compare_digest`, whatever
        matched earlier: the time taken depends on the number of entries,
        not on whether or where the token matched.
        """
        digest = _digest(presented)
        found: str | None = None
        for stored, source in self._entries:
            match = hmac.compare_digest(stored, digest)
            found = source if match else found
        # The empty token never authenticates, even if (impossibly) configured.
        return found if presented else None

    def authenticate(self, authorization: str | None) -> str | None:
        """The source of a request's `Authorization` header value, or None (missing, malformed
        or unknown token: callers answer all three the same way)."""
        token = bearer_token(authorization)
        return None if token is None else self.lookup(token)

    def __repr__(self) -> str:
        return f"TokenBook(sources={sorted(self.sources)!r})"

    __str__ = __repr__
