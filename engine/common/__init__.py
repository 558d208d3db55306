"""Shared by every process: errors, configuration, the control block, metrics, the retry
policy, allocator tuning, reserving a mapped file's space, waiting for a child's exit, the
version. Runs wherever it is imported (the user's process, the sender, the servers), so it
holds no state of its own.
May import: nothing else of engine.
"""
