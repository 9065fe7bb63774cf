"""Peers for bench/streams.py, each run as its own process on the same events."""
