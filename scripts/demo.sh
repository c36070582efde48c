#!/usr/bin/env bash
# The main job: a local mesh demo. Installs what it needs, then runs
# `vsm-edge demo` with any arguments given here (e.g. --nodes 5 --json).
source "$(dirname "$0")/_env.sh"
ensure_venv demo
exec vsm-edge demo "$@"
