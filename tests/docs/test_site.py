"""The documentation site builds with ``mkdocs build --strict``, is offline, and documents every module."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import mkdocs_api  # noqa: E402  (the hook that generates the API reference pages)

# an element that makes the browser fetch something: scripts, stylesheets/fonts/preloads, images, frames
FETCHES = re.compile(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)=[\"'](https?:)?//", re.I)
CSS_FETCHES = re.compile(r"(@import|url\()\s*[\"']?(https?:)?//", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


def test_no_external_fonts_or_scripts(site):
    bad = []
    for path in site.rglob("*"):
        if path.suffix == ".html":
            bad += [f"{path.relative_to(site)}: {m.group(0)}" for m in FETCHES.finditer(path.read_text())]
        elif path.suffix == ".css":
            bad += [f"{path.relative_to(site)}: {m.group(0)}" for m in CSS_FETCHES.finditer(path.read_text())]
    assert not bad, "the site fetches from the network:\n" + "\n".join(bad[:20])
    assert 'class="mermaid"' not in "".join(p.read_text() for p in site.rglob("*.html"))  # loads mermaid from a CDN


def _public_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not n.name.startswith("_")]


def test_api_reference_has_every_module_and_public_name(site):
    names = mkdocs_api.modules(ROOT)
    files = {p.relative_to(ROOT) for p in (ROOT / "workbench").rglob("*.py")}
    assert len(names) == len(files) and "workbench.atlas" in names and "workbench.models.attention" in names
    missing = []
    for path in sorted(files):
        parts = path.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        html = site / "reference" / name / "index.html"
        if not html.is_file():
            missing.append(f"{name}: no page")
            continue
        text = html.read_text()
        missing += [f"{name}.{f}" for f in _public_names(ROOT / path) if f'id="{name}.{f}"' not in text]
    assert not missing, "not in the API reference:\n" + "\n".join(missing)


def test_nav_lists_every_page(site):
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(re.findall(r"[\w./-]+\.md", str(config["nav"])))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == listed, (f"pages missing from the nav in mkdocs.yml: {sorted(pages - listed)}; "
                             f"nav entries without a page: {sorted(listed - pages)}")
