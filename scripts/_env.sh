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

# A venv of its own from a lock file (rebuilt when the lock changes): $1 the venv's folder,
# $2 the lock, $3 what it is for (said while it is built).
ensure_locked_venv() {
    local venv="$1" lock="$2" what="$3" stamp="$1/.lock-stamp" want py
    want="$(sha256sum "$lock" | cut -c1-16)"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        py="$(pick_python)"
        echo "engine: bootstrapping $venv ($what) from $(basename "$lock") ..." >&2
        [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
        "$venv/bin/python" -m pip install --quiet -r "$lock" >&2
        rm -f "$venv/.engine-installed"
        echo "$want" > "$stamp"
    fi
}

# The reference server of the differential tests (weave's own SqliteTraceServer, which
# only older weave wheels ship): a venv of its own, so it never meets the project's weave.
# Only scripts/test needs it; the demo and the bench do not wait for it.
ensure_ref_venv() {
    ensure_locked_venv "$ROOT/.venv-ref" "$ROOT/requirements-ref.lock" "reference weave server"
    export ENGINE_REF_PYTHON="$ROOT/.venv-ref/bin/python"
}

# weave 0.53.x, the other weave the weave integration is tested with (tests/integrations):
# the checkout installed there as users install the package (editable: engine-weave.pth).
ensure_weave53_venv() {
    local venv="$ROOT/.venv-w53"
    ensure_locked_venv "$venv" "$ROOT/requirements-w53.lock" "weave 0.53 client"
    if [ ! -f "$venv/.engine-installed" ]; then
        "$venv/bin/python" -m pip install --quiet --no-deps -e "$ROOT" >&2
        touch "$venv/.engine-installed"
    fi
    export ENGINE_WEAVE53_PYTHON="$venv/bin/python"
}
