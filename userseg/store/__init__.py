"""Persistent state: directory snapshot, IP->user mappings, applications, policies, settings, audit.

Import Store and StoreError from here; the submodules are implementation.
"""

from userseg.store.codec import StoreError
from userseg.store.faults import is_corruption, is_transient
from userseg.store.repository import AuditEntry, SnapshotParts, Store

__all__ = ["AuditEntry", "SnapshotParts", "Store", "StoreError", "is_corruption", "is_transient"]
