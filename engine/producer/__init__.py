"""Runs in the user's eval process: the :class:`Engine` (owner) and its tracers.

Rules: microseconds per call, no threads or sockets in producers, never raise into user
code except documented errors.
May import: ``common``, ``native``, ``ring``, ``wire``.
"""
