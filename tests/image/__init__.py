"""Helpers that build the dockerdns container image for the tests (tests/image/offline.py)."""
