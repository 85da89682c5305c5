"""The committed dashboard build (market/dashboard/web/dist) is what `npm run build:dashboard`
makes from the sources and package-lock.json, it loads nothing from the internet, and it stays
small."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "market" / "dashboard" / "web"
DIST = WEB / "dist"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dist_is_rebuilt_byte_for_byte_from_the_sources(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "esbuild").is_dir():
        pytest.skip("node or node_modules/esbuild missing: run `make setup` (npm ci)")
    subprocess.run([node, str(WEB / "build.mjs"), "--outdir", str(tmp_path)], cwd=ROOT,
                   check=True, timeout=120)
    built, committed = _files(tmp_path), _files(DIST)
    assert sorted(built) == sorted(committed)
    stale = [name for name in built if built[name] != committed[name]]
    assert not stale, f"dist is out of date, run `npm run build:dashboard`: {stale}"


def test_dist_loads_nothing_from_the_internet_and_is_small() -> None:
    files = _files(DIST)
    html = files["index.html"].decode()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert ref.startswith(("/dashboard/assets/", "data:", "#")), ref
    css = files["assets/app.css"].decode()
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", css), "the stylesheet fetches from the web"
    assert "@import" not in css
    js = files["assets/app.js"].decode()
    assert not re.search(r"import\s*\(?\s*['\"]https?://", js)
    total = sum(len(b) for b in files.values())
    assert total < 400_000, f"the dashboard bundle is {total} bytes"
