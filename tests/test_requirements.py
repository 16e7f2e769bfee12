"""requirements.txt declares every third-party package that app.py, webui/, loaders/ and kernels/ import (lazy
imports inside functions included), so a fresh install cannot start and then fail on an import."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = {"app", "webui", "loaders", "kernels", "tests"}
# Installed apart by the installer (built from source, optional: the app runs without it).
INSTALLED_APART = {"llama-cpp-python"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, Path]:
    """Top-level name of every absolute import -> the first file that imports it."""
    files = [ROOT / "app.py", *(p for d in ("webui", "loaders", "kernels") for p in sorted((ROOT / d).rglob("*.py")))]
    found: dict[str, Path] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(ROOT))
    return {name: path for name, path in found.items() if name not in sys.stdlib_module_names and name not in OWN}


def declared() -> set[str]:
    """The distribution names requirements.txt lists (markers and versions dropped)."""
    names = set()
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(_normal(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]))
    return names


def test_every_imported_package_is_declared() -> None:
    distributions = importlib.metadata.packages_distributions()
    have = declared()
    missing, unknown = [], []
    for module, path in sorted(imported_modules().items()):
        names = {_normal(d) for d in distributions.get(module, [])}
        if not names:
            unknown.append(f"{module} (imported by {path}) is not installed here")
        elif not names & (have | INSTALLED_APART):
            missing.append(f"{module} (imported by {path}): add {' or '.join(sorted(names))} to requirements.txt")
    assert not unknown, unknown
    assert not missing, missing


def test_declared_floors_are_met_by_the_tested_environment() -> None:
    """The floors are the versions this checkout's environment has (and is tested with): none above them."""
    from packaging.requirements import Requirement

    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} but {version} is installed"
