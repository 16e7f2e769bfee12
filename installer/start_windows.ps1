# Corral installer for Windows: the same steps as installer/common.sh (see that file for the design).
# Find Python >= 3.10, create installer_files\env, detect NVIDIA (nvidia-smi) or CPU, install the matching PyTorch
# and llama-cpp-python builds, then requirements.txt; later runs start at once when the install stamp matches.
param([switch]$Update)
$ErrorActionPreference = "Stop"
$Root = Split-Path -Parent $PSScriptRoot
$InstallDir = if ($env:CORRAL_INSTALL_DIR) { $env:CORRAL_INSTALL_DIR } else { Join-Path $Root "installer_files" }
$EnvDir = Join-Path $InstallDir "env"
$LogFile = Join-Path $InstallDir "install.log"
$StampFile = Join-Path $InstallDir "installed.stamp"
$TorchVersion = if ($env:CORRAL_TORCH_VERSION) { $env:CORRAL_TORCH_VERSION } else { "2.13.0" }
$LlamaVersion = if ($env:CORRAL_LLAMA_CPP_VERSION) { $env:CORRAL_LLAMA_CPP_VERSION } else { "0.3.36" }
$CudaTag = if ($env:CORRAL_CUDA_TAG) { $env:CORRAL_CUDA_TAG } else { "cu128" }
$CpuIndex = if ($env:CORRAL_TORCH_INDEX) { $env:CORRAL_TORCH_INDEX } else { "https://download.pytorch.org/whl/cpu" }
$CudaIndex = if ($env:CORRAL_TORCH_CUDA_INDEX) { $env:CORRAL_TORCH_CUDA_INDEX } else { "https://download.pytorch.org/whl/$CudaTag" }

$Variant = ""; $LlamaCpp = $true; $Reinstall = $false; $DryRun = $false; $Dev = $false; $InstallOnly = [bool]$Update
$AppArgs = @()
foreach ($a in $args) {
    switch ($a) {
        "--cpu" { $Variant = "cpu"; $AppArgs += "--cpu" }
        "--cuda" { $Variant = "cuda" }
        "--no-llama-cpp" { $LlamaCpp = $false }
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

# Find Python >= 3.10 (the py launcher first, then python on PATH).
$Python = $null
foreach ($c in @($env:CORRAL_PYTHON, "py -3.12", "py -3.11", "py -3.10", "python")) {
    if (-not $c) { continue }
    $parts = $c.Split(" ")
    try { & $parts[0] $parts[1..9] -c "import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)" 2>$null } catch { continue }
    if ($LASTEXITCODE -eq 0) { $Python = $parts; break }
}
if (-not $Python) { Fail "find Python" "no Python 3.10 or newer was found" "install Python 3.11 from python.org (tick 'Add to PATH'), or set CORRAL_PYTHON" }

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
    $(if ($LlamaCpp) { "plan: llama-cpp-python==$LlamaVersion CMAKE_ARGS='$LlamaCmake'" } else { "plan: llama-cpp-python skipped (--no-llama-cpp)" }),
    "plan: then requirements.txt")
if ($DryRun) { $Plan | ForEach-Object { Say $_ }; exit 0 }

$Req = Get-Content (Join-Path $Root "requirements.txt") -Raw
if ($Dev) { $Req += Get-Content (Join-Path $Root "requirements-dev.txt") -Raw }
$Wanted = "variant=$Variant torch=$TorchSpec index=$TorchIndex llama=$LlamaCpp`:$LlamaVersion`:$LlamaCmake dev=$Dev`n$Req"
$WantedHash = [System.BitConverter]::ToString([System.Security.Cryptography.SHA256]::Create().ComputeHash([Text.Encoding]::UTF8.GetBytes($Wanted)))
$Py = Join-Path $EnvDir "Scripts\python.exe"

function PipInstall($step, [string[]]$pipArgs) {
    Step $step
    & $Py -m pip install --disable-pip-version-check @pipArgs *>> $LogFile
    if ($LASTEXITCODE -ne 0) { Fail $step "pip exited with an error (see the log)" "check your network or disk space, then run again with --reinstall" }
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
    if ($TorchIndex -eq "pypi") { PipInstall "install PyTorch ($Variant)" @($TorchSpec) }
    else { PipInstall "install PyTorch ($Variant)" @($TorchSpec, "--index-url", $TorchIndex, "--extra-index-url", "https://pypi.org/simple") }
    if ($LlamaCpp) {
        $env:CMAKE_ARGS = $LlamaCmake
        # --force-reinstall --no-cache-dir: a build with other flags may be installed or cached already
        PipInstall "install llama-cpp-python ($Variant)" @("llama-cpp-python==$LlamaVersion", "--force-reinstall", "--no-cache-dir")
    }
    PipInstall "install requirements.txt" @("-r", (Join-Path $Root "requirements.txt"))
    if ($Dev) { PipInstall "install requirements-dev.txt" @("-r", (Join-Path $Root "requirements-dev.txt")) }
    Set-Content $StampFile $WantedHash
    Say "installed."
}
if ($InstallOnly) { Say "up to date."; exit 0 }
$env:GRADIO_ANALYTICS_ENABLED = "False"; $env:HF_HUB_DISABLE_TELEMETRY = "1"
Set-Location $Root
& $Py app.py @AppArgs
exit $LASTEXITCODE
