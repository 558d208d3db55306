"""Bench contenders of our own (the peers' drivers live in ``bench.peers``)."""
