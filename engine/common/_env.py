"""Every ``ENGINE_*`` environment variable engine reads, declared in one place.

Settings of :class:`engine.EngineConfig` are read as ``ENGINE_<FIELD>`` (``ENGINE_LINGER_MS``);
the variables below are the others. Any other ``ENGINE_*`` variable is a typo until proven
otherwise: :func:`unknown_variables` finds them and :func:`closest` suggests the name meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

PREFIX = "ENGINE_"

CONFIG = "ENGINE_CONFIG"  # the TOML file of settings
API_KEY = "ENGINE_API_KEY"  # also the api_key setting; never a command-line flag
LOG_LEVEL = "ENGINE_LOG_LEVEL"  # debug, info, warning, error; debug also shows CLI tracebacks
LOG_FORMAT = "ENGINE_LOG_FORMAT"  # text, logfmt, json: the sender process logs in it too
PURE_PYTHON = "ENGINE_PURE_PYTHON"  # 1: do not load the C accelerator in this process
WEAVE = "ENGINE_WEAVE"  # 1: engine.integrations.weave installs itself on import
WEAVE_SPEEDUPS = "ENGINE_WEAVE_SPEEDUPS"  # 0: the weave integration keeps weave's per-call is_op / wandb look
WEAVE_OWNER = "ENGINE_WEAVE_OWNER"  # the weave integration's owner: spawned children write into its engine (internal)
UNKNOWN_ENV = "ENGINE_UNKNOWN_ENV"  # "warn" or "error": what a misspelt variable does (library: warn, CLI: error)
KEYS_FILE = "ENGINE_KEYS_FILE"  # engine serve / relay: the API keys file
TLS_CERT = "ENGINE_TLS_CERT"  # engine serve / relay: serve HTTPS with this certificate (PEM) …
TLS_KEY = "ENGINE_TLS_KEY"  # … and this private key (PEM, mode 0600)
ROOT_PATH = "ENGINE_ROOT_PATH"  # engine serve: the path prefix of a reverse proxy in front (/engine)
FUZZ_EXAMPLES = "ENGINE_FUZZ_EXAMPLES"  # tests: examples per route of the server's fuzz test
CHAOS_SEEDS = "ENGINE_CHAOS_SEEDS"  # tests: the seeds the chaos test draws (N, or FIRST-LAST)
PROCESS_CHAOS_SEEDS = "ENGINE_PROCESS_CHAOS_SEEDS"  # tests: the same for the process-chaos test
TEST_SCREENSHOTS = "ENGINE_TEST_SCREENSHOTS"  # tests: where the browser test copies its screenshots
SENDER_API_KEY = "ENGINE_SENDER_API_KEY"  # the owner hands its key to the sender (internal)
SENDER_KEY_FROM = "ENGINE_SENDER_KEY_FROM"  # where the owner took that key from (internal, no secret)
PYTHON = "ENGINE_PYTHON"  # scripts/_env.sh: the interpreter that builds .venv
REF_PYTHON = "ENGINE_REF_PYTHON"  # scripts/_env.sh: weave's reference server (fidelity tests)
WEAVE53_PYTHON = "ENGINE_WEAVE53_PYTHON"  # scripts/_env.sh: weave 0.53's venv (integration tests)
OTHER_PYTHONS = "ENGINE_OTHER_PYTHONS"  # tests: more interpreters (paths, ":"-separated) for the version-sensitive tests
CLICKHOUSE_PASSWORD = "ENGINE_CLICKHOUSE_PASSWORD"  # engine serve --store clickhouse://…
CLICKHOUSE_PASSWORD_FILE = "ENGINE_CLICKHOUSE_PASSWORD_FILE"  # … or the file holding it
CLICKHOUSE_PING_TIMEOUT_S = "ENGINE_CLICKHOUSE_PING_TIMEOUT_S"  # … how long /ready and the start wait
CLICKHOUSE_STATEMENT_TIMEOUT_S = "ENGINE_CLICKHOUSE_STATEMENT_TIMEOUT_S"  # … and every other statement
COPY_FROM_API_KEY = "ENGINE_COPY_FROM_API_KEY"  # engine copy: the key for --from
COPY_TO_API_KEY = "ENGINE_COPY_TO_API_KEY"  # engine copy: the key for --to

OTHER_VARIABLES = frozenset({
    CONFIG, API_KEY, LOG_LEVEL, LOG_FORMAT, PURE_PYTHON, WEAVE, WEAVE_SPEEDUPS, WEAVE_OWNER, UNKNOWN_ENV, SENDER_API_KEY, SENDER_KEY_FROM,
    PYTHON, REF_PYTHON, WEAVE53_PYTHON, OTHER_PYTHONS, TEST_SCREENSHOTS, FUZZ_EXAMPLES, CHAOS_SEEDS, PROCESS_CHAOS_SEEDS, KEYS_FILE, TLS_CERT, TLS_KEY, ROOT_PATH, CLICKHOUSE_PASSWORD, CLICKHOUSE_PASSWORD_FILE,
    CLICKHOUSE_PING_TIMEOUT_S, CLICKHOUSE_STATEMENT_TIMEOUT_S, COPY_FROM_API_KEY, COPY_TO_API_KEY,
})  # fmt: skip


def setting_variable(field: str) -> str:
    """``linger_ms`` -> ``ENGINE_LINGER_MS``."""
    return PREFIX + field.upper()


def known_variables(fields: Iterable[str]) -> frozenset[str]:
    return OTHER_VARIABLES | {setting_variable(f) for f in fields}


def unknown_variables(environ: Mapping[str, str], fields: Iterable[str]) -> list[str]:
    """``ENGINE_*`` names in ``environ`` that engine does not read, sorted."""
    known = known_variables(fields)
    return sorted(n for n in environ if n.startswith(PREFIX) and n not in known)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be, if any is close enough."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean X?"`` or ``""``."""
    match = closest(name, candidates)
    return f"; did you mean {match}?" if match else ""
