"""Helpers for tests that assert copy-on-write behaviour (see issue: testing helpers)."""
