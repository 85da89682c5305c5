"""The built wheel: one top-level package, ``meshcompute``, holding every module of the
repository's mapped folders (a subpackage missing from ``[tool.setuptools] packages`` would be
left out of every non-editable install, such as the Docker image)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_one_namespace_with_every_module(tmp_path: Path) -> None:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    # built from a copy: setuptools' build/ folder in the checkout could hold stale modules
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in set(mapping.values()):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("meshcompute-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {
        "meshcompute", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}

    expected = set()
    for package, folder in mapping.items():
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder)
            if "__pycache__" in relative.parts:
                continue
            expected.add("/".join([*package.split("."), *relative.parts]))
    missing = sorted(expected - names)
    assert missing == [], f"modules left out of the wheel: {missing}"
