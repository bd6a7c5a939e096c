"""MkDocs hook: one API reference page per module of the ``workbench`` package, generated at build time.

Every ``.py`` file under ``workbench/`` becomes ``reference/<dotted.name>.md`` holding a mkdocstrings
``::: dotted.name`` block, and the nav's "API reference" entry is filled with those pages grouped by
subpackage, so a new module appears in the site (and in ``mkdocs build --strict``) without editing anything.
"""

from __future__ import annotations

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


def on_config(config):
    """Fill the nav's "API reference" entry with one page per module."""
    names = modules(_root(config))
    config["nav"] = [{SECTION: _nav(names)} if isinstance(e, dict) and SECTION in e else e for e in config["nav"] or []]
    return config


def on_files(files, config):
    """Add the generated module pages to the build."""
    for name in modules(_root(config)):
        files.append(File.generated(config, page(name), content=f"# `{name}`\n\n::: {name}\n"))
    return files
