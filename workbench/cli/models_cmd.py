"""``workbench models`` (list, with what is cached; ``--check FOLDER``: is it supported) and ``workbench fetch NAME``."""

from __future__ import annotations

from . import validate


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the models that load with no hub, and which are cached")
    p.add_argument("--verify", action="store_true",
                   help="also check the SHA-256 of every cached file against the records made at conversion")
    p.add_argument("--check", metavar="FOLDER",
                   help="say whether this local HF model folder (or registered name) is supported and which features "
                        "work on it, each tried on a short probe (exit 1 if the architecture is not supported)")
    p.add_argument("--device", type=validate.device, help="device for --check (default: cuda if present, else cpu)")
    p.set_defaults(func=run_models)
    p = sub.add_parser("fetch", help="download, verify and convert a registered model into the cache")
    p.add_argument("name", help="a registered model name (see `workbench models`)")
    p.add_argument("--gguf", type=validate.input_file, help="use this local GGUF file instead of downloading it (checked by sha256)")
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    p.set_defaults(func=run_fetch)


def _state(row: dict) -> str:
    """What `workbench models` says about one cache: cached / verified / unverified / DAMAGED / not cached."""
    name, size = row["name"], f"{row['size_mb']} MB"
    if row.get("error"):
        return f"DAMAGED: {row['error']}"
    return {
        "ok": f"cached ({size})",
        "verified": f"cached ({size}), SHA-256 verified",
        "unverified": f"cached ({size}), unverified: converted before size/hash records (its next load records them)",
        "damaged": f"DAMAGED ({'; '.join(row['problems'])}): run `workbench fetch {name} --force`",
    }.get(row["state"], f"not cached: `workbench fetch {name}`")


def run_models(args) -> int:
    if getattr(args, "check", None):
        return run_check(args)
    from ..errors import DamagedModelError
    from ..models import DEFAULT_MODEL, describe_cache, load
    from ..models.cache import home
    from ..models.registry import LOCAL

    print(f"cache: {home() / 'models'}  (set WORKBENCH_HOME to move it)")
    rows = describe_cache(hashes=args.verify)
    failed = {}
    if args.verify and any(row["state"] == "unverified" for row in rows):
        for row in rows:  # nothing to compare with yet: load once (probe logits), which records sizes and hashes
            if row["state"] == "unverified":
                try:
                    load(row["name"], device="cpu", fetch_missing=False)
                except DamagedModelError as err:
                    failed[row["name"]] = str(err)
        rows = describe_cache(hashes=True)
        for row in rows:
            if row["name"] in failed:
                row.update(state="damaged", error=failed[row["name"]])
    for row in rows:
        default = " [default]" if row["name"] == DEFAULT_MODEL else ""
        print(f"  {row['name']:<14}{default:<10} {_state(row)}\n      {row['description']}")
    for spec in LOCAL.values():  # shipped in the repository: nothing to fetch
        print(f"  {spec.name:<24} shipped ({spec.folder})\n      {spec.description}")
    print("  any local HF folder or hub id (org/name) also loads")
    damaged = [row["name"] for row in rows if row["state"] == "damaged"]
    if damaged:
        raise DamagedModelError(f"damaged cache: {', '.join(damaged)}; run "
                                + " and ".join(f"`workbench fetch {name} --force`" for name in damaged))
    return 0


def run_check(args) -> int:
    from ..model_check import check_model

    result = check_model(args.check, device=args.device)
    print("\n".join(result.lines()))
    return 0 if result.supported else 1


def run_fetch(args) -> int:
    from ..models import fetch

    print(fetch(args.name, gguf=args.gguf, force=args.force))
    return 0
