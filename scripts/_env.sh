# Shared by scripts/demo.sh and scripts/test.sh: find Python >= 3.11, make the
# project's virtual environment and install the project into it (again only
# when pyproject.toml changed). Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VSM_EDGE_VENV:-$ROOT/.venv}"

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    # Install Debian packages when we can (root); otherwise say what is missing.
    if is_root && command -v apt-get >/dev/null 2>&1; then
        echo "==> apt-get install $*" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "$@" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
    else
        echo "==> missing Debian packages: $* (run as root, or: sudo apt-get install $*)" >&2
        return 1
    fi
}

find_python() {
    local cand
    for cand in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 \
            && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$cand"; return 0
        fi
    done
    return 1
}

ensure_venv() {
    local py extras="$1"
    py="$(find_python)" || { apt_install python3 python3-venv && py="$(find_python)"; } \
        || { echo "error: Python >= 3.11 is required" >&2; exit 1; }
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
            apt_install python3-venv || { echo "error: python3-venv is required" >&2; exit 1; }
        fi
        echo "==> creating $VENV" >&2
        "$py" -m venv "$VENV"
    fi
    local stamp="$VENV/.vsm-edge-installed" want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $extras"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "==> installing vsm-edge${extras:+[$extras]} into $VENV (first run: a minute or two)" >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
        local target="$ROOT"
        [ -z "$extras" ] || target="$ROOT[$extras]"
        "$VENV/bin/python" -m pip install -q -e "$target" >&2
        echo "$want" >"$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}
