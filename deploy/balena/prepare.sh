#!/usr/bin/env bash
# Builds the project's wheel into deploy/balena/dist/, the build context's only
# input from outside this folder (balena build contexts cannot reach up).
# Then: balena push <fleet> --source deploy/balena
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
rm -rf "$here/dist"
mkdir -p "$here/dist"
"$python" -m pip wheel --no-deps --quiet --wheel-dir "$here/dist" "$root"
ls "$here/dist"
