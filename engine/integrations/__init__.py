"""Integrations that route other tracing clients through the engine (``engine.integrations.weave``)."""
