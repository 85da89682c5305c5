"""Check the import rules in pyproject.toml ([tool.importlinter]) against the installed layout.

The services and the roof are top-level folders of the repository that setuptools maps into the
one ``meshcompute`` namespace (``[tool.setuptools.package-dir]``). import-linter builds its
graph by walking the root package's folder, where the mapped packages are not, so this stages
the layout pip would install (each mapped folder copied to its place under ``meshcompute/``, in
a temporary folder) and runs ``lint-imports`` there. Exit status is lint-imports' own.

    python tools/lint_imports.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage(target: Path) -> None:
    """Copy every package of ``[tool.setuptools.package-dir]`` to where it installs."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        shutil.copytree(ROOT / folder, target.joinpath(*package.split(".")), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "artifacts"))


def main() -> int:
    lint = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="mesh-layout-") as folder:
        staged = Path(folder)
        stage(staged)
        env = {**os.environ, "PYTHONPATH": str(staged)}
        command = [str(lint), str(ROOT / "pyproject.toml"), "--no-cache"]
        return subprocess.run(command, cwd=staged, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
