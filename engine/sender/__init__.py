"""Runs in the sender process (``python -m engine.sender``): drain, batch, send, persist.

Owns the network, adaptive limits, the spool and the dead letters (``replay`` reuses them
from the CLI); a separate interpreter, so never the producer's code.
May import: ``common``, ``native``, ``ring``, ``wire``.
"""
