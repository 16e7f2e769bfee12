@echo off
rem Corral one-click start for Windows: installs on first run (into installer_files\), then starts the app.
rem   installer\start_windows.bat [--cpu^|--cuda] [--no-llama-cpp^|--llama-cpp] [--reinstall] [--dry-run] [app.py flags...]
rem Same steps and flags as start_linux.sh; the work is done by start_windows.ps1 beside this file.
setlocal
cd /d "%~dp0.."
powershell -NoProfile -ExecutionPolicy Bypass -File "%~dp0start_windows.ps1" %*
exit /b %ERRORLEVEL%
