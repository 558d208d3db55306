"""Integrations that route other tracing clients through the engine, in the user's processes
(``weave``: weave's client writes its calls into an Engine; ``ray``: one engine per node,
tracers attached to the ring set of the node they run on).
May import: ``client``, ``common``, ``native``, ``producer``, ``ring``, ``wire``.
"""
