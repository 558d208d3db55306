"""The package version (pyproject.toml's), importable from any package without the root one."""

__version__ = "0.1.0"
