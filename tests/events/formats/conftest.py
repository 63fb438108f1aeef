"""Fixtures of the parser tests."""

from tests.events.formats.corpus import json_backend

__all__ = ["json_backend"]
