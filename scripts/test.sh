#!/usr/bin/env bash
# The whole test suite: lint, type check, import contracts, then pytest (unit,
# property, fuzz and integration tests against a real Mosquitto broker).
# Installs what it needs.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k hlc`.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"

# Every external program the tests run is listed, with its Debian package, in
# scripts/programs.txt. Install what is missing (as root); under CI=true a
# missing program is an error here, before any test runs.
export PATH="$PATH:/usr/sbin:/sbin"
missing_programs() {
    # "program package" for each program of the list this run needs and lacks.
    local program package needed
    while read -r program package needed; do
        case "$program" in ''|'#'*) continue ;; esac
        [ "$needed" = always ] || [ "${CI:-}" = true ] || continue
        command -v "$program" >/dev/null 2>&1 || echo "$program $package"
    done <"$ROOT/scripts/programs.txt"
}
mapfile -t packages < <(missing_programs | cut -d' ' -f2 | sort -u)
[ "${#packages[@]}" -eq 0 ] || apt_install "${packages[@]}" || true
mapfile -t missing < <(missing_programs)
if [ "${#missing[@]}" -gt 0 ]; then
    printf 'missing program (Debian package): %s\n' "${missing[@]}" >&2
    if [ "${CI:-}" = true ]; then
        echo "error: CI=true and the tests need the programs above; install them (as root this script does)" >&2
        exit 1
    fi
    echo "warning: the tests that need the programs above will be skipped" >&2
fi

ensure_venv dev,demo

echo "==> ruff" >&2
ruff check .

echo "==> mypy" >&2
# The import names (vsm_edge.*) differ from the folder names, so mypy reads the
# packages through a small tree of symlinks that mirrors the import namespace.
TC="$ROOT/.typecheck/vsm_edge"
mkdir -p "$TC"
ln -sfn ../../agent "$TC/agent"
ln -sfn ../../sync "$TC/sync"
ln -sfn ../../models "$TC/models"
ln -sfn ../../firmware-bridge/python "$TC/bridge"
(cd "$ROOT/.typecheck" && mypy --config-file "$ROOT/pyproject.toml" \
    -p vsm_edge.sync -p vsm_edge.models -p vsm_edge.bridge -p vsm_edge.agent)

echo "==> lint-imports" >&2
# The arrows between the parts ([tool.importlinter] in pyproject.toml), read
# through the same tree of symlinks.
(cd "$ROOT/.typecheck" && lint-imports --no-logo "$ROOT/pyproject.toml")

echo "==> import cycles" >&2
(cd "$ROOT/.typecheck" && python "$ROOT/scripts/check_cycles.py")

echo "==> pytest" >&2
exec python -m pytest "$@"
