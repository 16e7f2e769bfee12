#!/usr/bin/env bash
# Corral update for macOS: pulls the code when this is a git clone, then installs only what changed.
set -u
# shellcheck source=installer/common.sh
. "$(dirname "$0")/common.sh"
parse_flags "$@"
update_all
