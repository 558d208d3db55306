# Sourced by the scripts: makes sure .venv exists and matches the lock file.
# Needs only a Python 3 (>= 3.10) and access to the package registry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"

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

# A venv of its own, made from a lock file and made again when its inputs change: $1 the
# venv's folder, $2 the lock, $3 what it is for (said while it is built), $4 "checkout" to
# install this checkout there too (editable, with its engine-weave.pth; the C accelerator is
# compiled at install, so a changed source makes it again).
ensure_locked_venv() {
    local venv="$1" lock="$2" what="$3" checkout="${4:-}" stamp="$1/.lock-stamp" want py
    local inputs=("$lock")
    [ -z "$checkout" ] || inputs+=("$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/engine/native/*.[ch])
    want="$(sha256sum "${inputs[@]}" | sha256sum | cut -c1-16)"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        py="$(pick_python)"
        echo "engine: bootstrapping $venv ($what) with $("$py" --version) from $(basename "$lock") ..." >&2
        [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
        "$venv/bin/python" -m pip install --quiet -r "$lock" >&2
        # built with pyproject.toml's build requirements (a fresh venv's setuptools has no
        # bdist_wheel): this compiles the C accelerator when a compiler is there
        [ -z "$checkout" ] || "$venv/bin/python" -m pip install --quiet --no-deps -e "$ROOT" >&2
        echo "$want" > "$stamp"
    fi
}

ensure_locked_venv "$VENV" "$LOCK" "the project" checkout
export PATH="$VENV/bin:$PATH"

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
    ensure_locked_venv "$ROOT/.venv-w53" "$ROOT/requirements-w53.lock" "weave 0.53 client" checkout
    export ENGINE_WEAVE53_PYTHON="$ROOT/.venv-w53/bin/python"
}
