"""Integrations that route other tracing clients through the engine, in the user's process
(``engine.integrations.weave``: weave's client writes its calls into an Engine).
May import: ``client``, ``common``, ``native``, ``producer``, ``wire``.
"""
