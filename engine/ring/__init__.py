"""The shared-memory ring set: written by producers, drained by the sender.

Both sides map the same segment; the writer half runs in the user's process (microseconds,
never blocks past ``max_block_ms``). Imports ``engine.common``, ``engine.native``, ``engine.wire``.
"""
