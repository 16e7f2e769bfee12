#!/usr/bin/env bash
# Corral one-click start for macOS (Apple silicon: Metal builds; Intel: CPU), same flags as start_linux.sh.
set -u
# shellcheck source=installer/common.sh
. "$(dirname "$0")/common.sh"
parse_flags "$@"
ensure_installed
start_app
