"""Runs in the sender process (``python -m engine.sender``): drain, batch, send, persist.

Owns the network, retries, adaptive limits, the spool and the dead letters (``replay`` reuses
them from the CLI). Imports ``common``, ``ring``, ``native``, ``wire``; never ``producer``.
"""
