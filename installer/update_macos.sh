#!/usr/bin/env bash
# Corral update for macOS: pulls the code when this is a git clone, then installs only what changed.
set -u
# shellcheck source=installer/common.sh
. "$(dirname "$0")/common.sh"
parse_flags "$@"
if git -C "$CORRAL_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    log_step "updating the code (git pull)"
    git -C "$CORRAL_ROOT" pull --ff-only >>"$LOG_FILE" 2>&1 ||
        fail "git pull" "the pull did not fast-forward (local changes?)" "commit or stash your changes, then run the update again"
else
    say "not a git clone: download the new release by hand, then run this script to install what changed."
fi
OPT_INSTALL_ONLY=1
ensure_installed
say "up to date."
