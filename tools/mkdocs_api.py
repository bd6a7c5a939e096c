"""MkDocs hook: one API reference page per module of the ``workbench`` package, generated at build time.

Every ``.py`` file under ``workbench/`` becomes ``reference/<dotted.name>.md`` holding a mkdocstrings
``::: dotted.name`` block, and the nav's "API reference" entry is filled with those pages grouped by
subpackage, so a new module appears in the site (and in ``mkdocs build --strict``) without editing anything.

Pages that other branches bring (``extra.pending_pages`` in mkdocs.yml) are in the nav already; until such a
page exists its nav entry is left out and links to it are shown as plain text, so ``--strict`` passes both
before and after the merge. Delete a name from that list once its page is on main.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

PACKAGE = "workbench"
SECTION = "API reference"


def modules(root: Path) -> list[str]:
    """Dotted names of every module of the package under ``root``, package ``__init__`` as the package name."""
    names = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(set(names))


def page(name: str) -> str:
    """Where the generated page of module ``name`` lives inside the docs folder."""
    return f"reference/{name}.md"


def _root(config) -> Path:
    return Path(config["config_file_path"]).parent


def _nav(names: list[str]) -> list:
    packages = {n for n in names if any(m.startswith(n + ".") for m in names)}
    groups: dict[str, list] = {}
    for name in names:
        sub = ".".join(name.split(".")[:2])
        groups.setdefault(sub if sub in packages and sub != PACKAGE else "", []).append({name: page(name)})
    top = groups.pop("", [])
    return top + [{g: entries} for g, entries in sorted(groups.items())]


def pending(config) -> list[str]:
    """Pages named in ``extra.pending_pages`` that do not exist yet in the docs folder."""
    docs = Path(config["docs_dir"])
    return [p for p in (config["extra"] or {}).get("pending_pages", []) if not (docs / p).is_file()]


def _prune(nav: list, missing: set[str]) -> list:
    kept = []
    for entry in nav:
        if isinstance(entry, dict):
            (title, value), = entry.items()
            if isinstance(value, list):
                value = _prune(value, missing)
            if value != [] and not (isinstance(value, str) and value in missing):
                kept.append({title: value})
        elif entry not in missing:
            kept.append(entry)
    return kept


def on_config(config):
    """Fill the nav's "API reference" entry with one page per module; leave out pending pages not there yet."""
    names = modules(_root(config))
    nav = [{SECTION: _nav(names)} if isinstance(e, dict) and SECTION in e else e for e in config["nav"] or []]
    config["nav"] = _prune(nav, set(pending(config)))
    return config


def on_page_markdown(markdown, page, config, files):
    """Show links to pending pages that are not there yet as their plain text."""
    for name in pending(config):
        markdown = re.sub(r"\[([^\]]*)\]\((?:\.\./)*" + re.escape(name) + r"(#[^)]*)?\)", r"\1", markdown)
    return markdown


def on_files(files, config):
    """Add the generated module pages to the build."""
    for name in modules(_root(config)):
        files.append(File.generated(config, page(name), content=f"# `{name}`\n\n::: {name}\n"))
    return files
