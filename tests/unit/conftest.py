"""Fixtures of the unit tests: the in-process server (tests/inproc.py)."""

from tests.inproc import inproc, inproc_factory

__all__ = ["inproc", "inproc_factory"]
