# Corral installer for Windows: the same steps as installer/common.sh (see that file for the design).
# Find Python >= 3.11 (transformers 5 needs it), create installer_files\env, detect NVIDIA (nvidia-smi) or CPU, install
# the matching PyTorch and llama-cpp-python builds, then requirements.txt; later runs start at once when the install
# stamp matches. As in common.sh, nothing optional half-fails an install: a failed llama.cpp build (no MSVC, no CUDA
# toolkit) leaves the app without that loader (installer_files\llama-cpp.failed; retry with --llama-cpp), and a
# PyTorch index that does not answer within seconds is skipped for PyPI.
param([switch]$Update)
$ErrorActionPreference = "Stop"
$Root = Split-Path -Parent $PSScriptRoot
$InstallDir = if ($env:CORRAL_INSTALL_DIR) { $env:CORRAL_INSTALL_DIR } else { Join-Path $Root "installer_files" }
$EnvDir = Join-Path $InstallDir "env"
$LogFile = Join-Path $InstallDir "install.log"
$StampFile = Join-Path $InstallDir "installed.stamp"
$LlamaFailedFile = Join-Path $InstallDir "llama-cpp.failed"
$ProbeSeconds = if ($env:CORRAL_PROBE_SECONDS) { [int]$env:CORRAL_PROBE_SECONDS } else { 5 }
$TorchVersion = if ($env:CORRAL_TORCH_VERSION) { $env:CORRAL_TORCH_VERSION } else { "2.13.0" }
$LlamaVersion = if ($env:CORRAL_LLAMA_CPP_VERSION) { $env:CORRAL_LLAMA_CPP_VERSION } else { "0.3.36" }
$CudaTag = if ($env:CORRAL_CUDA_TAG) { $env:CORRAL_CUDA_TAG } else { "cu128" }
$CpuIndex = if ($env:CORRAL_TORCH_INDEX) { $env:CORRAL_TORCH_INDEX } else { "https://download.pytorch.org/whl/cpu" }
$CudaIndex = if ($env:CORRAL_TORCH_CUDA_INDEX) { $env:CORRAL_TORCH_CUDA_INDEX } else { "https://download.pytorch.org/whl/$CudaTag" }

$Variant = ""; $LlamaCpp = $true; $LlamaRetry = $false; $Reinstall = $false; $DryRun = $false; $Dev = $false; $InstallOnly = [bool]$Update
$AppArgs = @()
foreach ($a in $args) {
    switch ($a) {
        "--cpu" { $Variant = "cpu"; $AppArgs += "--cpu" }
        "--cuda" { $Variant = "cuda" }
        "--no-llama-cpp" { $LlamaCpp = $false }
        "--llama-cpp" { $LlamaCpp = $true; $LlamaRetry = $true }
        "--reinstall" { $Reinstall = $true }
        "--dry-run" { $DryRun = $true }
        "--dev" { $Dev = $true }
        "--install-only" { $InstallOnly = $true }
        default { $AppArgs += $a }
    }
}

function Say($m) { Write-Host "[corral] $m" }
function Step($m) { Say $m; New-Item -ItemType Directory -Force $InstallDir | Out-Null; Add-Content $LogFile "`n=== $(Get-Date -Format s)  $m" }
function Fail($step, $why, $try) { Say "FAILED: $step"; Say "  why: $why"; Say "  try: $try"; Say "  full log: $LogFile"; exit 1 }

# Find Python >= 3.11 (the py launcher first, then python on PATH).
$Python = $null
foreach ($c in @($env:CORRAL_PYTHON, "py -3.13", "py -3.12", "py -3.11", "python")) {
    if (-not $c) { continue }
    $parts = $c.Split(" ")
    try { & $parts[0] $parts[1..9] -c "import sys, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)" 2>$null } catch { continue }
    if ($LASTEXITCODE -eq 0) { $Python = $parts; break }
}
if (-not $Python) { Fail "find Python" "no Python 3.11 or newer was found (transformers 5 needs 3.11)" "install Python 3.11 or newer from python.org (tick 'Add to PATH'), or set CORRAL_PYTHON" }

if ($Update -and (git -C $Root rev-parse --is-inside-work-tree 2>$null)) {
    Step "updating the code (git pull)"
    git -C $Root pull --ff-only *>> $LogFile
    if ($LASTEXITCODE -ne 0) { Fail "git pull" "the pull did not fast-forward (local changes?)" "commit or stash your changes, then update again" }
}

if (-not $Variant) {
    $Variant = "cpu"
    if (Get-Command nvidia-smi -ErrorAction SilentlyContinue) { nvidia-smi -L *> $null; if ($LASTEXITCODE -eq 0) { $Variant = "cuda" } }
}
$TorchSpec = "torch==$TorchVersion"; $LlamaCmake = ""
if ($Variant -eq "cuda") { $TorchIndex = $CudaIndex; $LlamaCmake = "-DGGML_CUDA=on" } else { $TorchIndex = $CpuIndex }
# As in common.sh: named instruction sets (the AVX2 floor here), never -march=native (it crashed on AMX CPUs).
if ($Variant -ne "cuda") { $LlamaCmake = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" }

$Plan = @("plan: hardware=$Variant", "plan: python=$($Python -join ' ') env=$EnvDir", "plan: torch=$TorchSpec from $TorchIndex",
    $(if ($LlamaCpp) { "plan: llama-cpp-python==$LlamaVersion CMAKE_ARGS='$LlamaCmake' (optional: skipped if it fails to build)" } else { "plan: llama-cpp-python skipped (--no-llama-cpp)" }),
    "plan: then requirements.txt")
if ($DryRun) { $Plan | ForEach-Object { Say $_ }; exit 0 }

$Req = Get-Content (Join-Path $Root "requirements.txt") -Raw
if ($Dev) { $Req += Get-Content (Join-Path $Root "requirements-dev.txt") -Raw }
$Wanted = "variant=$Variant torch=$TorchSpec index=$TorchIndex llama=$LlamaCpp`:$LlamaVersion`:$LlamaCmake dev=$Dev`n$Req"
$WantedHash = [System.BitConverter]::ToString([System.Security.Cryptography.SHA256]::Create().ComputeHash([Text.Encoding]::UTF8.GetBytes($Wanted)))
$Py = Join-Path $EnvDir "Scripts\python.exe"

function PipTry($step, [string[]]$pipArgs) {
    # pip install; $true when it worked (the caller decides whether a failure ends the install)
    Step $step
    & $Py -m pip install --disable-pip-version-check @pipArgs *>> $LogFile
    return ($LASTEXITCODE -eq 0)
}

function PipInstall($step, [string[]]$pipArgs) {
    if (-not (PipTry $step $pipArgs)) { Fail $step "pip exited with an error (see the log)" "check your network or disk space, then run again with --reinstall" }
}

function TorchSource {
    # The PyTorch index if it answers within $ProbeSeconds (any HTTP status counts), else "pypi": pip would retry an
    # unreachable index for about 1.5 minutes before falling back to the extra index.
    if ($TorchIndex -eq "pypi") { return "pypi" }
    try { Invoke-WebRequest -Uri $TorchIndex -Method Head -TimeoutSec $ProbeSeconds -UseBasicParsing | Out-Null; return $TorchIndex }
    catch {
        if ($_.Exception.Response) { return $TorchIndex }
        Say "the PyTorch index $TorchIndex did not answer within $ProbeSeconds s; installing PyTorch from PyPI instead"
        Add-Content $LogFile "PyTorch index $TorchIndex unreachable: $($_.Exception.Message)"
        return "pypi"
    }
}

function InstallLlamaCpp {
    # Optional: a failed build (no MSVC, no CUDA toolkit) is logged and skipped, never the install's end.
    Remove-Item -Force $LlamaFailedFile -ErrorAction SilentlyContinue
    $env:CMAKE_ARGS = $LlamaCmake
    # --force-reinstall --no-cache-dir: a build with other flags may be installed or cached already
    $step = "install llama-cpp-python ($Variant; builds from source, minutes)"
    if (PipTry $step @("llama-cpp-python==$LlamaVersion", "--force-reinstall", "--no-cache-dir")) { return }
    $why = (Get-Content $LogFile -Tail 300 | Select-String -Pattern "error|not found|could not|unable" | Select-Object -Last 3) -join "`n"
    Set-Content $LlamaFailedFile "step: $step`nCMAKE_ARGS: $LlamaCmake`n$why"
    Say "WARNING: $step failed; Corral is installed without the llama.cpp loader (GGUF models use the native loader)."
    Say "  why: $(if ($why) { $why } else { 'see the log' })"
    Say "  try: install Visual Studio Build Tools (C++) and CMake$(if ($Variant -eq 'cuda') { ' and the CUDA toolkit' }), then run again with --llama-cpp (or --reinstall)"
    Say "  full log: $LogFile"
}

$Current = if (Test-Path $StampFile) { (Get-Content $StampFile -Raw).Trim() } else { "" }
if ($Reinstall -or -not (Test-Path $Py) -or $Current -ne $WantedHash) {
    $Plan | ForEach-Object { Say $_ }
    if ($Reinstall -and (Test-Path $EnvDir)) { Step "removing the old environment (--reinstall)"; Remove-Item -Recurse -Force $EnvDir }
    if (-not (Test-Path $Py)) {
        Step "creating the environment in $EnvDir"
        & $Python[0] $Python[1..9] -m venv $EnvDir *>> $LogFile
        if ($LASTEXITCODE -ne 0) { Fail "create the environment" "python -m venv failed" "reinstall Python from python.org" }
    }
    $TorchSource = TorchSource  # the stamp keeps $TorchIndex (the wish): a fallback does not reinstall next start
    if ($TorchSource -eq "pypi") { PipInstall "install PyTorch ($Variant)" @($TorchSpec) }
    else { PipInstall "install PyTorch ($Variant)" @($TorchSpec, "--index-url", $TorchSource, "--extra-index-url", "https://pypi.org/simple") }
    if ($LlamaCpp) { InstallLlamaCpp }
    PipInstall "install requirements.txt" @("-r", (Join-Path $Root "requirements.txt"))
    if ($Dev) { PipInstall "install requirements-dev.txt" @("-r", (Join-Path $Root "requirements-dev.txt")) }
    Set-Content $StampFile $WantedHash
    Say "installed."
} else {
    if ($LlamaRetry) { InstallLlamaCpp }
    if (Test-Path $LlamaFailedFile) { Say "note: the llama.cpp loader is not installed (its build failed; see $LlamaFailedFile). Retry: --llama-cpp" }
}
if ($InstallOnly) { Say "up to date."; exit 0 }
$env:GRADIO_ANALYTICS_ENABLED = "False"; $env:HF_HUB_DISABLE_TELEMETRY = "1"
Set-Location $Root
& $Py app.py @AppArgs
exit $LASTEXITCODE
