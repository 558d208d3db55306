import engine


def test_public_surface_is_pinned():
    assert sorted(engine.__all__) == sorted(
        [
            "AsyncRemoteHTTPTraceServer",
            "CallHandle",
            "Closed",
            "ConfigError",
            "EncodeError",
            "Engine",
            "EngineConfig",
            "EngineError",
            "HTTPError",
            "NoRingSlot",
            "ParentCall",
            "PayloadTooLarge",
            "RemoteHTTPTraceServer",
            "RingFull",
            "SendError",
            "SharedMemoryFull",
            "ThreadPoolExecutor",
            "Tracer",
            "__version__",
            "current_call",
            "load_config",
            "nested",
        ]
    )


def test_every_error_derives_from_engine_error():
    for name in engine.__all__:
        obj = getattr(engine, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, engine.EngineError), name


def test_the_wire_models_and_codecs_stay_importable_from_engine_wire():
    import engine.wire

    for name in ("encode", "decode", "encoder", "strict_encoder", "utcnow", "uuid7",
                 "StartedCallSchemaForInsert", "EndedCallSchemaForInsert",
                 "CompletedCallSchemaForInsert", "CallStartRes", "Query"):
        assert name in engine.wire.__all__, name
        assert getattr(engine.wire, name) is not None, name
    for name in engine.wire.__all__:
        assert hasattr(engine.wire, name), name


def test_the_integration_and_process_entry_points_stay_importable():
    import importlib

    import engine.cli
    import engine.integrations.weave

    assert engine.integrations.weave.__all__ == ["install", "installed_engine"]
    assert callable(engine.integrations.weave.install)
    assert callable(engine.cli.main)  # the ``engine`` console script (pyproject.toml)
    # what ``python -m engine.sender`` runs (the Engine starts it so)
    assert callable(importlib.import_module("engine.sender._process").main)
    assert importlib.util.find_spec("engine.sender.__main__") is not None
    assert importlib.util.find_spec("engine.__main__") is not None
