# Sourced by scripts/*: find Python >= 3.11, create .venv, install the project when pyproject changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

ensure_venv() {
    local extras="${1:-dev}"
    local py
    py="$(find_python)"
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv with $("$py" --version)" >&2
        "$py" -m venv .venv
    fi
    local stamp=".venv/.installed-$extras"
    local want
    want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing .[$extras] into .venv" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
        if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".[$extras]" \
            >.venv/install.log 2>&1; then
            tail -n 30 .venv/install.log >&2
            echo "error: installing .[$extras] failed (full log: .venv/install.log)" >&2
            return 1
        fi
        echo "$want" >"$stamp"
    fi
}
