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
            "PayloadTooLarge",
            "RemoteHTTPTraceServer",
            "RingFull",
            "SendError",
            "Tracer",
            "__version__",
            "current_call",
            "load_config",
        ]
    )


def test_every_error_derives_from_engine_error():
    for name in engine.__all__:
        obj = getattr(engine, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, engine.EngineError), name
