"""The ClickHouse store of ``engine serve`` (``--store clickhouse://USER@HOST:PORT/DB`` or
``--store chdb:///FOLDER``) and a local ClickHouse for development (``local_server``)."""

from engine.server.clickhouse._connect import Target, parse_store_url
from engine.server.clickhouse._store import ClickHouseStore

__all__ = ["ClickHouseStore", "Target", "parse_store_url"]
