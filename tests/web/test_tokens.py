"""Bearer tokens: generation, hash format, lookup, and that no secret leaks into a repr."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from userseg.web.tokens import TokenBook, TokenBookError, bearer_token, new_token, token_hash

A, B = new_token(), new_token()


def book() -> TokenBook:
    return TokenBook({token_hash(A): "vpn", token_hash(B): "portal"})


def test_new_token_is_prefixed_urlsafe_and_random() -> None:
    made = {new_token() for _ in range(200)}
    assert len(made) == 200
    for token in made:
        assert re.fullmatch(r"usp_[A-Za-z0-9_-]{43}", token), token  # 32 bytes = 43 base64url chars


def test_token_hash_format_and_value() -> None:
    assert token_hash("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", token_hash(A))
    assert token_hash(A) != token_hash(B)
    assert token_hash("\ud800x").startswith("sha256:")  # a lone surrogate must not raise


def test_lookup_right_wrong_empty_and_garbage() -> None:
    b = book()
    assert b.lookup(A) == "vpn"
    assert b.lookup(B) == "portal"
    assert b.lookup(A + "x") is None
    assert b.lookup(A[:-1]) is None
    assert b.lookup("") is None
    assert b.lookup("\x00\ud800\u202e" * 50) is None
    assert b.lookup("x" * 100_000) is None
    assert b.lookup(token_hash(A)) is None  # the stored hash is not a credential


def test_lookup_compares_every_entry_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = {token_hash(new_token()): f"s{i}" for i in range(5)}
    first = new_token()
    b = TokenBook({token_hash(first): "first", **entries})
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(x: bytes, y: bytes) -> bool:
        calls.append((x, y))
        return real(x, y)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module looks it up on every call
    assert b.lookup(first) == "first"
    assert len(calls) == 6
    calls.clear()
    assert b.lookup("wrong") is None
    assert len(calls) == 6


@pytest.mark.parametrize(
    "stored",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,  # upper case: the config format is lower-case hex
        "sha256:" + "g" * 64,
        "SHA256:" + "a" * 64,
        "sha512:" + "a" * 64,
        "a" * 64,
        " sha256:" + "a" * 64,
        "",
    ],
)
def test_malformed_stored_hash_is_rejected(stored: str) -> None:
    with pytest.raises(TokenBookError, match="token hash of source 'vpn' is malformed"):
        TokenBook({stored: "vpn"})


def test_unusable_books_are_rejected_with_the_source_named() -> None:
    with pytest.raises(TokenBookError, match="hash of an empty token"):
        TokenBook({token_hash(""): "vpn"})
    with pytest.raises(TokenBookError, match="without a source name"):
        TokenBook({token_hash(A): " "})

    class Twice(dict[str, str]):  # a dict cannot hold one key twice; a config list of sources can
        def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
            return [(token_hash(A), "vpn"), (token_hash(A), "VPN")]

    with pytest.raises(TokenBookError, match="sources 'vpn' and 'VPN' have the same token hash"):
        TokenBook(Twice())


def test_no_secret_in_repr_or_str() -> None:
    b = book()
    for text in (repr(b), str(b), f"{b}", f"{b!r}"):
        assert A not in text and B not in text
        assert token_hash(A) not in text and token_hash(A)[7:] not in text
        assert "portal" in text and "vpn" in text
    assert len(b) == 2 and b.sources == {"vpn", "portal"}


def test_error_messages_carry_no_hash() -> None:
    bad = "sha256:" + "Z" * 64
    with pytest.raises(TokenBookError) as caught:
        TokenBook({bad: "vpn"})
    assert "Z" * 10 not in str(caught.value)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {A}", A),
        (f"bearer {A}", A),  # the scheme is case-insensitive (RFC 7235)
        (f"BEARER  {A} ", A),
        ("Bearer abc+/=", "abc+/="),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Basic {A}", None),
        (f"Bearer {A} {B}", None),
        (f"Bearer {A},Bearer {B}", None),  # two Authorization headers, joined by the server
        (f"Bearer\t{A}", None),
        ("Bearer tok\u00e9n", None),
        ("Bearer " + "a" * 1025, None),
        (A, None),
    ],
)
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_authenticate_combines_header_parsing_and_lookup() -> None:
    b = book()
    assert b.authenticate(f"Bearer {B}") == "portal"
    assert b.authenticate(f"Bearer {new_token()}") is None
    assert b.authenticate(f"Token {A}") is None
    assert b.authenticate(None) is None
