"""``workbench models`` (list, with what is cached) and ``workbench fetch NAME``."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the models that load with no hub, and which are cached")
    p.set_defaults(func=run_models)
    p = sub.add_parser("fetch", help="download, verify and convert a registered model into the cache")
    p.add_argument("name", help="a registered model name (see `workbench models`)")
    p.add_argument("--gguf", help="use this local GGUF file instead of downloading it (checked by sha256)")
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    p.set_defaults(func=run_fetch)


def run_models(args) -> int:
    from ..models import DEFAULT_MODEL, describe_cache
    from ..models.cache import home
    from ..models.registry import LOCAL

    print(f"cache: {home() / 'models'}  (set WORKBENCH_HOME to move it)")
    for row in describe_cache():
        state = f"cached ({row['size_mb']} MB)" if row["cached"] else "not cached: `workbench fetch " + row["name"] + "`"
        default = " [default]" if row["name"] == DEFAULT_MODEL else ""
        print(f"  {row['name']:<14}{default:<10} {state}\n      {row['description']}")
    for spec in LOCAL.values():  # shipped in the repository: nothing to fetch
        print(f"  {spec.name:<24} shipped ({spec.folder})\n      {spec.description}")
    print("  any local HF folder or hub id (org/name) also loads")
    return 0


def run_fetch(args) -> int:
    from ..models import fetch

    print(fetch(args.name, gguf=args.gguf, force=args.force))
    return 0
