"""``diffmem train WORLD``: train an embedded world (or your own images) into the diffmem home cache.

WORLD is a registry name (digits-t2i, digits-dit, digits-bench, custom) or a path to a folder of PNG/JPEG files or
an .npz file (= the custom world on that data). Training resumes from the last checkpoint after a kill; a finished
checkpoint is reused. The cache is $DIFFMEM_HOME (default ~/.cache/diffmem).
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an embedded world (or a folder/.npz of images) on CPU",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("world", metavar="WORLD", help="digits-t2i | digits-dit | digits-bench | custom | PATH")
    p.add_argument("--data", help="custom world: folder of PNG/JPEG files or .npz")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the world's recipe)")
    p.add_argument("--seed", type=int, help="training seed (default 0)")
    p.add_argument("--planted", type=int, help="K planted images (default 20)")
    p.add_argument("--duplicates", type=int, help="m copies of each planted image (default 100)")
    p.add_argument("--templates", type=int, help="template groups (default 0)")
    p.add_argument("--subset", type=int, help="digits-dit: number n of training images")
    p.add_argument("--image-size", type=int, help="custom: square side the images are resized to")
    p.add_argument("--out", help="checkpoint directory (default: $DIFFMEM_HOME/worlds/<name>-<hash>)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; use 1 on a busy shared machine, "
                   "where 2 threads per process thrash)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and directory, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    from diffmem.worlds.registry import default_config
    from diffmem.worlds.world import checkpoint_dir, train_world

    fields = {k: v for k, v in (("planted", args.planted), ("duplicates", args.duplicates),
                                 ("templates", args.templates), ("subset", args.subset),
                                 ("image_size", args.image_size)) if v is not None}
    config = default_config(args.world, data=args.data, **fields)
    config = config.with_overrides(train={k: v for k, v in (("steps", args.steps), ("seed", args.seed))
                                          if v is not None})
    directory = args.out or checkpoint_dir(config)
    if args.dry_run:
        print(json.dumps({"config": config.to_dict(), "directory": str(directory)}, indent=2))
        return 0
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    path = train_world(config, directory, progress=not args.no_progress)
    info = json.loads((path / "train.json").read_text())
    print(f"trained {config.world.name} ({info['steps']} steps, {info['wall_s']:.0f} s this session) -> {path}")
    print(f"report: diffmem world-report {path} --out REPORT_DIR")
    return 0
