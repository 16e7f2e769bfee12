#!/usr/bin/env bash
# Shared steps of Corral's one-click installer (sourced by start_linux.sh, start_macos.sh and update_*.sh).
#
# First run: find Python >= 3.11 (transformers 5 needs it), create installer_files/env, detect the hardware, install
# the matching PyTorch and llama-cpp-python builds, then requirements.txt. Later runs: compare a stamp of what was
# installed with what is wanted now and start at once when nothing changed. Every step is logged to
# installer_files/install.log.
#
# Nothing optional can half-fail an install: a llama.cpp build that fails (no compiler, no CUDA toolkit) leaves a
# working app without that loader (installer_files/llama-cpp.failed says why; --llama-cpp retries just that build),
# and a PyTorch index that cannot be reached within seconds is skipped for pip's own (PyPI) instead of retried.

CORRAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INSTALL_DIR="${CORRAL_INSTALL_DIR:-$CORRAL_ROOT/installer_files}"
ENV_DIR="$INSTALL_DIR/env"
LOG_FILE="$INSTALL_DIR/install.log"
STAMP_FILE="$INSTALL_DIR/installed.stamp"
LLAMA_FAILED_FILE="$INSTALL_DIR/llama-cpp.failed"
PYTHON_MIN="3.11"
PROBE_SECONDS="${CORRAL_PROBE_SECONDS:-5}"  # how long the PyTorch index may take to answer before PyPI is used
WHEEL_CACHE="${CORRAL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/corral/wheels}"
TORCH_VERSION="${CORRAL_TORCH_VERSION:-2.13.0}"
LLAMA_CPP_VERSION="${CORRAL_LLAMA_CPP_VERSION:-0.3.36}"
CUDA_TAG="${CORRAL_CUDA_TAG:-cu128}"
# Where CPU / CUDA torch wheels come from. "pypi" means pip's own configuration (a mirror, or wheels on disk).
TORCH_CPU_INDEX="${CORRAL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_CUDA_INDEX="${CORRAL_TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/$CUDA_TAG}"

OPT_VARIANT=""        # cpu | cuda | metal ; "" = detect
OPT_LLAMA_CPP=1
OPT_LLAMA_RETRY=0     # --llama-cpp: build llama-cpp-python again (after a failed build)
OPT_REINSTALL=0
OPT_DRY_RUN=0
OPT_DEV=0             # also install requirements-dev.txt (tests)
OPT_INSTALL_ONLY=0
APP_ARGS=()

say() { printf '[corral] %s\n' "$*"; }
log_step() { say "$*"; mkdir -p "$INSTALL_DIR"; printf '\n=== %s  %s\n' "$(date '+%F %T')" "$*" >>"$LOG_FILE"; }

fail() {
    # fail STEP WHY WHAT-TO-TRY
    say "FAILED: $1"
    say "  why: $2"
    say "  try: $3"
    say "  full log: $LOG_FILE"
    exit 1
}

parse_flags() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --cpu) OPT_VARIANT=cpu ;;
            --cuda) OPT_VARIANT=cuda ;;
            --metal) OPT_VARIANT=metal ;;
            --no-llama-cpp) OPT_LLAMA_CPP=0 ;;
            --llama-cpp) OPT_LLAMA_CPP=1; OPT_LLAMA_RETRY=1 ;;
            --reinstall) OPT_REINSTALL=1 ;;
            --dry-run) OPT_DRY_RUN=1 ;;
            --dev) OPT_DEV=1 ;;
            --install-only) OPT_INSTALL_ONLY=1 ;;
            *) APP_ARGS+=("$1") ;;
        esac
        shift
    done
    # --cpu also means the app itself runs on the CPU.
    if [ "$OPT_VARIANT" = cpu ]; then APP_ARGS+=(--cpu); fi
}

find_python() {
    local candidate
    for candidate in "${CORRAL_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            PYTHON="$(command -v "$candidate")"
            return 0
        fi
    done
    fail "find Python" "no Python $PYTHON_MIN or newer with the venv module was found on PATH (transformers 5 needs $PYTHON_MIN)" \
        "install Python 3.11 (Debian/Ubuntu: sudo apt install python3 python3-venv; macOS: brew install python@3.11), or set CORRAL_PYTHON=/path/to/python3"
}

detect_variant() {
    if [ -n "$OPT_VARIANT" ]; then VARIANT="$OPT_VARIANT"; return; fi
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        VARIANT=cuda
    elif [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ]; then
        VARIANT=metal
    else
        VARIANT=cpu
    fi
}

plan() {
    # Sets TORCH_SPEC, TORCH_INDEX, LLAMA_CMAKE_ARGS for VARIANT.
    TORCH_SPEC="torch==$TORCH_VERSION"
    LLAMA_CMAKE_ARGS=""
    case "$VARIANT" in
        cuda) TORCH_INDEX="$TORCH_CUDA_INDEX"; LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" ;;
        metal) TORCH_INDEX="pypi"; LLAMA_CMAKE_ARGS="-DGGML_METAL=on" ;;
        *) TORCH_INDEX="$TORCH_CPU_INDEX"; LLAMA_CMAKE_ARGS="$(cpu_build_flags)" ;;
    esac
}

cpu_build_flags() {
    # llama.cpp's default -march=native build segfaulted in llama_decode on our CI machines (Xeon VMs with AMX), and
    # pip's wheel cache would hand a native build from one machine to another. On x86-64: name the instruction sets
    # instead, from what this CPU has (AVX2 as the floor; AVX-512 adds ~8% to SmolLM2 decode), never AMX. The wheel
    # cache key includes these flags, so a build is only reused on a CPU with the same sets.
    [ "$(uname -m)" = x86_64 ] || return 0
    local flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    local cpu_flags
    cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    case "$cpu_flags" in *" avx512f "*)
        flags="$flags -DGGML_AVX512=ON"
        case "$cpu_flags" in *" avx512vbmi "*) flags="$flags -DGGML_AVX512_VBMI=ON" ;; esac
        case "$cpu_flags" in *" avx512_vnni "*) flags="$flags -DGGML_AVX512_VNNI=ON" ;; esac
        case "$cpu_flags" in *" avx512_bf16 "*) flags="$flags -DGGML_AVX512_BF16=ON" ;; esac
        ;;
    esac
    case "$cpu_flags" in *" avx_vnni "*) flags="$flags -DGGML_AVX_VNNI=ON" ;; esac
    echo "$flags"
}

wanted_stamp() {
    # Everything that, when changed, needs a (re)install.
    {
        echo "variant=$VARIANT torch=$TORCH_SPEC index=$TORCH_INDEX llama=$OPT_LLAMA_CPP:$LLAMA_CPP_VERSION:$LLAMA_CMAKE_ARGS dev=$OPT_DEV"
        cat "$CORRAL_ROOT/requirements.txt"
        if [ "$OPT_DEV" = 1 ]; then cat "$CORRAL_ROOT/requirements-dev.txt"; fi
    } | cksum | cut -d' ' -f1
}

print_plan() {
    say "plan: hardware=$VARIANT"
    say "plan: python=$PYTHON env=$ENV_DIR"
    say "plan: torch=$TORCH_SPEC from ${TORCH_INDEX}"
    if [ "$OPT_LLAMA_CPP" = 1 ]; then
        say "plan: llama-cpp-python==$LLAMA_CPP_VERSION CMAKE_ARGS='${LLAMA_CMAKE_ARGS}' (optional: skipped if it fails to build)"
    else
        say "plan: llama-cpp-python skipped (--no-llama-cpp)"
    fi
    say "plan: then requirements.txt$([ "$OPT_DEV" = 1 ] && echo ' and requirements-dev.txt')"
}

pip_install() {
    # pip_install STEP ARGS... : run `pip install` in the env, log everything, fail with the step's name.
    local step="$1"; shift
    pip_run "$step" install "$@"
}

pip_run() {
    # pip_run STEP COMMAND ARGS... : run pip COMMAND in the env, log everything, fail with the step's name.
    local step="$1"; shift
    if ! pip_try "$step" "$@"; then
        fail "$step" "pip exited with an error (last lines below)$(printf '\n'; tail -n 5 "$LOG_FILE")" \
            "check your network or disk space, then run again with --reinstall"
    fi
}

pip_try() {
    # pip_try STEP COMMAND ARGS... : as pip_run, but returns pip's status instead of ending the install.
    local step="$1"; shift
    log_step "$step"
    "$ENV_DIR/bin/python" -m pip "$@" --disable-pip-version-check >>"$LOG_FILE" 2>&1
}

torch_source() {
    # The index to install PyTorch from: TORCH_INDEX if it answers within PROBE_SECONDS, else "pypi". Without the
    # probe, pip retries an unreachable index for about 1.5 minutes before it falls back to the extra index.
    if [ "$TORCH_INDEX" = pypi ]; then echo pypi; return; fi
    if "$PYTHON" - "$TORCH_INDEX" "$PROBE_SECONDS" >>"$LOG_FILE" 2>&1 <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).close()
except urllib.error.HTTPError:
    pass  # it answered: reachable (pip reads the package pages, not this one)
except (OSError, ValueError) as error:
    print(f"PyTorch index {sys.argv[1]} unreachable: {error}")
    sys.exit(1)
PY
    then
        echo "$TORCH_INDEX"
    else
        say "the PyTorch index $TORCH_INDEX did not answer within ${PROBE_SECONDS} s; installing PyTorch from PyPI instead" >&2
        echo pypi
    fi
}

install_all() {
    if [ "$OPT_REINSTALL" = 1 ] && [ -d "$ENV_DIR" ]; then
        log_step "removing the old environment (--reinstall)"
        rm -rf "$ENV_DIR"
    fi
    if [ ! -x "$ENV_DIR/bin/python" ]; then
        log_step "creating the environment in $ENV_DIR"
        "$PYTHON" -m venv "$ENV_DIR" >>"$LOG_FILE" 2>&1 ||
            fail "create the environment" "python -m venv failed" "install the venv module (Debian/Ubuntu: sudo apt install python3-venv)"
    fi
    local source
    source="$(torch_source)"  # the stamp keeps TORCH_INDEX (the wish), so a fallback does not reinstall next start
    if [ "$source" = pypi ]; then
        pip_install "install PyTorch ($VARIANT)" "$TORCH_SPEC"
    else
        pip_install "install PyTorch ($VARIANT)" "$TORCH_SPEC" --index-url "$source" --extra-index-url https://pypi.org/simple
    fi
    if [ "$OPT_LLAMA_CPP" = 1 ]; then
        install_llama_cpp
    fi
    pip_install "install requirements.txt" -r "$CORRAL_ROOT/requirements.txt"
    if [ "$OPT_DEV" = 1 ]; then
        pip_install "install requirements-dev.txt" -r "$CORRAL_ROOT/requirements-dev.txt"
    fi
    wanted_stamp >"$STAMP_FILE"
}

install_llama_cpp() {
    # Built from source once per version and build flags (minutes), kept as a wheel under ~/.cache/corral/wheels.
    # pip's own wheel cache is not used: it ignores CMAKE_ARGS and would hand back a build made with other flags.
    # Optional: a failed build is logged and skipped (the app runs with its other loaders), never the install's end.
    local flags_sum wheels step
    flags_sum="$(printf '%s' "$LLAMA_CMAKE_ARGS" | cksum | cut -d' ' -f1)"
    wheels="$WHEEL_CACHE/llama-cpp-python-$LLAMA_CPP_VERSION-$VARIANT-$flags_sum"
    rm -f "$LLAMA_FAILED_FILE"
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        step="build llama-cpp-python ($VARIANT; minutes, once)"
        if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip_try "$step" wheel --no-deps --no-cache-dir --wheel-dir "$wheels" \
            "llama-cpp-python==$LLAMA_CPP_VERSION"; then
            llama_cpp_skipped "$step"
            return 0
        fi
    fi
    # A build with other flags may be installed already; pip would keep it as "already satisfied".
    pip_run "remove any other llama-cpp-python build" uninstall --yes llama-cpp-python
    pip_install "install llama-cpp-python ($VARIANT)" --only-binary llama-cpp-python --find-links "$wheels" "llama-cpp-python==$LLAMA_CPP_VERSION"
}

llama_cpp_skipped() {
    # llama_cpp_skipped STEP : say why llama.cpp is missing and how to retry; the install goes on without it.
    local why
    why="$(tail -n 300 "$LOG_FILE" | grep -iE 'error|not found|could not|unable' | tail -n 3)"
    {
        echo "step: $1"
        echo "CMAKE_ARGS: $LLAMA_CMAKE_ARGS"
        echo "$why"
    } >"$LLAMA_FAILED_FILE"
    say "WARNING: $1 failed; Corral is installed without the llama.cpp loader (GGUF models use the native loader)."
    say "  why: ${why:-see the log}"
    say "  try: install a C/C++ compiler and CMake$([ "$VARIANT" = cuda ] && echo ' and the CUDA toolkit (nvcc)'), then run again with --llama-cpp (or --reinstall)"
    say "  full log: $LOG_FILE"
}

ensure_installed() {
    find_python
    detect_variant
    plan
    if [ "$OPT_DRY_RUN" = 1 ]; then print_plan; exit 0; fi
    if [ "$OPT_REINSTALL" = 0 ] && [ -x "$ENV_DIR/bin/python" ] && [ -f "$STAMP_FILE" ] &&
        [ "$(cat "$STAMP_FILE")" = "$(wanted_stamp)" ]; then
        if [ "$OPT_LLAMA_RETRY" = 1 ]; then install_llama_cpp; fi
        if [ -f "$LLAMA_FAILED_FILE" ]; then
            say "note: the llama.cpp loader is not installed (its build failed; see $LLAMA_FAILED_FILE). Retry: --llama-cpp"
        fi
        return 0
    fi
    print_plan
    install_all
    say "installed."
}

update_all() {
    # The update scripts: pull the code when this is a git clone, then install only what changed.
    if [ "$OPT_DRY_RUN" = 1 ]; then
        say "plan: git pull --ff-only, then install what changed"
    elif git -C "$CORRAL_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        log_step "updating the code (git pull)"
        git -C "$CORRAL_ROOT" pull --ff-only >>"$LOG_FILE" 2>&1 ||
            fail "git pull" "the pull did not fast-forward (local changes?)" "commit or stash your changes, then run the update again"
    else
        say "not a git clone: download the new release by hand, then run this script to install what changed."
    fi
    OPT_INSTALL_ONLY=1
    ensure_installed
    say "up to date."
}

start_app() {
    [ "$OPT_INSTALL_ONLY" = 1 ] && return 0
    cd "$CORRAL_ROOT" || exit 1
    export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
    exec "$ENV_DIR/bin/python" app.py "${APP_ARGS[@]}"
}
