#!/usr/bin/env bash
# Runs Corral's test suite: installs the app and its test tools into installer_files/ (like start_linux.sh, plus
# requirements-dev.txt), then pytest. Extra arguments go to pytest:  ./installer/run_tests.sh -k download
set -u
# shellcheck source=installer/common.sh
. "$(dirname "$0")/common.sh"
PYTEST_ARGS=()
INSTALL_FLAGS=(--dev --install-only)
for arg in "$@"; do
    case "$arg" in
        --cpu|--cuda|--no-llama-cpp|--reinstall) INSTALL_FLAGS+=("$arg") ;;
        *) PYTEST_ARGS+=("$arg") ;;
    esac
done
parse_flags "${INSTALL_FLAGS[@]}"
ensure_installed
cd "$CORRAL_ROOT" || exit 1
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
exec "$ENV_DIR/bin/python" -m pytest "${PYTEST_ARGS[@]}"
