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

extras_cover() {
    # Whether the comma-separated extras $1 include every one of $2.
    local e
    for e in ${2//,/ }; do
        case ",$1," in *",$e,"*) ;; *) return 1 ;; esac
    done
}

ensure_venv() {
    # The venv holds exactly the versions in requirements.lock (made by
    # scripts/lock.sh). When pyproject.toml, the lock or the extras change, the
    # venv is made afresh so that nothing from an older install lingers.
    local py extras="$1"
    py="$(find_python)" || { apt_install python3 python3-venv && py="$(find_python)"; } \
        || { echo "error: Python >= 3.11 is required" >&2; exit 1; }
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv || { echo "error: python3-venv is required" >&2; exit 1; }
    fi
    local stamp="$VENV/.vsm-edge-installed" want
    want="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" | sha256sum | cut -d' ' -f1) $extras"
    local have
    have="$(cat "$stamp" 2>/dev/null || true)"
    # A venv with more extras installed serves a command that needs fewer (the
    # demo after the tests): only what is missing makes a new one.
    if [ "$have" != "$want" ] && ! { [ "${have%% *}" = "${want%% *}" ] \
            && extras_cover "${have#* }" "$extras"; }; then
        echo "==> creating $VENV with vsm-edge${extras:+[$extras]} from requirements.lock (a minute or two)" >&2
        if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
            echo "error: $VENV exists and is not a virtual environment; move it aside" >&2
            exit 1
        fi
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
        local target="$ROOT"
        [ -z "$extras" ] || target="$ROOT[$extras]"
        # PIP_CONSTRAINT (not -c) so that the isolated build of vsm-edge itself
        # also takes setuptools from the lock.
        PIP_CONSTRAINT="$ROOT/requirements.lock" \
            "$VENV/bin/python" -m pip install -q pip >&2
        PIP_CONSTRAINT="$ROOT/requirements.lock" \
            "$VENV/bin/python" -m pip install -q -e "$target" >&2
        echo "$want" >"$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}
