#!/usr/bin/env bash
# Corral one-click start for Linux: installs on first run (into installer_files/), then starts the app.
#   ./installer/start_linux.sh [--cpu|--cuda] [--no-llama-cpp|--llama-cpp] [--reinstall] [--dry-run] [app.py flags...]
set -u
# shellcheck source=installer/common.sh
. "$(dirname "$0")/common.sh"
parse_flags "$@"
ensure_installed
start_app
