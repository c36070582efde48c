#!/usr/bin/env bash
# Refresh requirements.lock: the exact versions of every Python package the two
# README commands install (runtime + the [dev] and [demo] extras), for every platform and
# Python >= 3.11 (uv's universal resolution writes markers where they differ).
# Run it after changing a dependency range in pyproject.toml, then run
# `bash scripts/test.sh` and commit the lock only if the suite passes with it.
# The [train] extra (TensorFlow) is not locked: it is optional.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
UV_VERSION=0.13.9
TOOL="$(mktemp -d)"
trap 'rm -rf "$TOOL"' EXIT
python3 -m venv "$TOOL/venv"
"$TOOL/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
cd "$ROOT"
"$TOOL/venv/bin/uv" pip compile pyproject.toml scripts/build-requirements.in \
    --constraint scripts/lock-constraints.txt \
    --extra dev --extra demo --universal --python-version 3.11 \
    --custom-compile-command "bash scripts/lock.sh" \
    -o requirements.lock "$@"
