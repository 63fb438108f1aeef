"""User-map elements name their users: the comment format.

Why: a user-map element (`ip -> goto c_<class>`, with a timeout) is all the
kernel needs to enforce, but on its own it cannot say *who* the IP belongs to.
Each element therefore carries the mapping's user name as its nftables element
comment (`nft list map inet userseg user4` shows `comment "alice"`), so that
admins can read it and so that the mappings can be rebuilt from the kernel
when the store is lost (core.recover).

The format, written by render (full syncs) and the reconciler's fast path:

- a name that fits is the comment, byte for byte (UTF-8, no NUL, at most
  COMMENT_MAX_BYTES, nft's own limit: `nft add element ... comment` refuses
  longer ones, so what we write can always be typed back by an admin);
- any other name (too long, containing NUL, not encodable) is cut at a
  character boundary and ends with TRUNCATION_MARK.  Such a comment still
  tells an admin who it is, but recovery refuses it: the full name is gone.
  A name that itself ends with the mark is written the same way (marked
  again), so a comment ending in the mark never passes for a complete name;
- an empty name means no comment at all (nothing to recover).

Trust here is about our own truncation, not about authenticity: anybody with
CAP_NET_ADMIN can write any comment into the table, as they can any element.
"""

from __future__ import annotations

from userseg.core.table import SetKind

COMMENT_MAX_BYTES = 128  # nft's NFTNL_UDATA_COMMENT_MAXLEN, without the terminating NUL
TRUNCATION_MARK = "\u2026"  # "…"
_KEEP = COMMENT_MAX_BYTES - len(TRUNCATION_MARK.encode())
USER_MAP = {4: "user4", 6: "user6"}  # the user maps' names, per IP version (render lays them out)
USER_MAP_KIND = {4: SetKind.VMAP4, 6: SetKind.VMAP6}


def element_comment(user: str) -> str:
    """The comment a user-map element carries for `user` (see the module doc)."""
    if user.isascii() and len(user) <= COMMENT_MAX_BYTES and "\0" not in user:
        return user  # the common case, decided without encoding (250k calls per full sync)
    try:
        raw = user.encode()
    except UnicodeEncodeError:  # lone surrogates: not representable, so never trusted
        raw = user.encode(errors="replace")
    else:
        if len(raw) <= COMMENT_MAX_BYTES and "\0" not in user and not user.endswith(TRUNCATION_MARK):
            return user
    kept = raw.replace(b"\0", b"?")[:_KEEP].decode(errors="ignore")  # drops a cut character's tail
    return kept + TRUNCATION_MARK


def element_comments(users: list[str]) -> list[str]:
    """element_comment of each name; a full sync's 250k names are checked in bulk (C loops)."""
    joined = "".join(users)
    if joined.isascii() and "\0" not in joined and max(map(len, users), default=0) <= COMMENT_MAX_BYTES:
        return users
    return [element_comment(u) for u in users]


def comment_user(comment: str) -> str | None:
    """The user a comment names, or None when it cannot be trusted to be a whole name."""
    if comment and not comment.endswith(TRUNCATION_MARK) and element_comment(comment) == comment:
        return comment  # (a cut comment is its own element_comment too: the mark must be checked)
    return None


def comment_fits(comment: str) -> bool:
    """Whether the writers may store this comment: UTF-8, no NUL, <= COMMENT_MAX_BYTES.

    Every element_comment() result fits; anything else in a MapElement is a bug
    upstream, and the writers refuse it with a clear error rather than letting
    nft or the kernel cut it.
    """
    if comment.isascii():
        return len(comment) <= COMMENT_MAX_BYTES and "\0" not in comment
    try:
        return len(comment.encode()) <= COMMENT_MAX_BYTES and "\0" not in comment
    except UnicodeEncodeError:
        return False
