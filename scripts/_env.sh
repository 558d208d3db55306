# Sourced by the scripts: makes sure .venv exists and matches the lock file.
# Needs only a Python 3 (>= 3.10) and access to the package registry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"
STAMP="$VENV/.lock-stamp"

pick_python() {
    for py in "${ENGINE_PYTHON:-}" python3.11 python3.12 python3.13 python3.10 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "engine: need Python >= 3.10 on PATH (or set ENGINE_PYTHON)" >&2
    return 1
}

# the C accelerator is built at install time: a changed source must rebuild it
want="$(sha256sum "$LOCK" "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/engine/native/*.[ch] |
    sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    py="$(pick_python)"
    echo "engine: bootstrapping $VENV with $("$py" --version) from requirements.lock ..." >&2
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -r "$LOCK" >&2
    # built with pyproject.toml's build requirements (a fresh venv's setuptools has no
    # bdist_wheel): this compiles the C accelerator when a compiler is there
    "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT" >&2
    echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"

# The reference server of the differential tests (weave's own SqliteTraceServer, which
# only older weave wheels ship): a venv of its own, so it never meets the project's weave.
# Only scripts/test needs it; the demo and the bench do not wait for it.
ensure_ref_venv() {
    local ref_venv="$ROOT/.venv-ref" ref_lock="$ROOT/requirements-ref.lock"
    local ref_stamp="$ROOT/.venv-ref/.lock-stamp" ref_want py
    ref_want="$(sha256sum "$ref_lock" | cut -c1-16)"
    if [ ! -x "$ref_venv/bin/python" ] || [ "$(cat "$ref_stamp" 2>/dev/null)" != "$ref_want" ]; then
        py="$(pick_python)"
        echo "engine: bootstrapping $ref_venv (reference weave server) from requirements-ref.lock ..." >&2
        [ -x "$ref_venv/bin/python" ] || "$py" -m venv "$ref_venv"
        "$ref_venv/bin/python" -m pip install --quiet --upgrade pip >&2
        "$ref_venv/bin/python" -m pip install --quiet -r "$ref_lock" >&2
        echo "$ref_want" > "$ref_stamp"
    fi
    export ENGINE_REF_PYTHON="$ref_venv/bin/python"
}
