"""The executor flags shared by ``workbench sweep`` and ``workbench niah``: --executor, --ray-address, --workers."""

from __future__ import annotations

from . import validate


def add_arguments(p) -> None:
    """Add --executor local|ray, --ray-address and --workers to a subcommand's parser."""
    from ..executors import EXECUTORS

    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="where cells are computed: local (this process, the default) or ray (Ray actors that load "
                        "the model once each; `pip install 'workbench[ray]'`)")
    p.add_argument("--ray-address", default=None, type=validate.ray_address, metavar="auto|HOST:PORT",
                   help="with --executor ray: join a running Ray cluster ('auto': the one started on this machine "
                        "with `ray start --head`; or its head's HOST:PORT); default: start Ray on this machine")
    p.add_argument("--workers", type=validate.count(1), default=None,
                   help="with --executor ray: number of workers (default: one per GPU; without GPUs, one per "
                        "4 CPUs); CPU workers share the CPUs as torch threads")


def executor(args):
    """The executor the flags ask for ('local', or a RayExecutor); InputError for Ray flags without --executor ray."""
    from ..errors import InputError
    from ..executors import RayExecutor
    from ..executors.ray_executor import import_ray

    if args.executor != "ray":
        given = [flag for flag, value in (("--ray-address", args.ray_address), ("--workers", args.workers)) if value]
        if given:
            raise InputError(f"{' and '.join(given)} only apply with --executor ray")
        return "local"
    import_ray()  # before the model is loaded: a missing ray is said at once
    return RayExecutor(address=args.ray_address, workers=args.workers)


