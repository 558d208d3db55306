"""Shared by every process: errors, configuration, the control block, metrics, allocator.

Runs wherever it is imported (the user's process, the sender, the servers), so it holds no
state of its own and imports nothing of engine but ``engine.common`` itself.
"""
