@echo off
rem Corral update for Windows: pulls the code when this is a git clone, then installs only what changed.
setlocal
cd /d "%~dp0.."
powershell -NoProfile -ExecutionPolicy Bypass -File "%~dp0start_windows.ps1" -Update %*
exit /b %ERRORLEVEL%
