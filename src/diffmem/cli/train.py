"""``diffmem train WORLD``: train an embedded world (or your own images) into the diffmem home cache.

WORLD is a registry name (digits-t2i, digits-dit, digits-bench, custom) or a path to a folder of PNG/JPEG files or
an .npz file (= the custom world on that data). Training resumes from the last checkpoint after a kill; a finished
checkpoint is reused. The cache is $DIFFMEM_HOME (default ~/.cache/diffmem).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffmem.cli.common import add_command, add_common, claim_out, emit, progress_enabled

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = add_command(sub, "train", __doc__)
    add_common(p, out=None, seed=None)
    p.add_argument("world", metavar="WORLD", help="digits-t2i | digits-dit | digits-bench | custom | PATH")
    p.add_argument("--data", help="custom world: folder of PNG/JPEG files or .npz")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default: the world's recipe)")
    p.add_argument("--seed", type=int, metavar="N", help="training seed (default 0)")
    p.add_argument("--planted", type=int, help="K planted images (default 20)")
    p.add_argument("--duplicates", type=int, help="m copies of each planted image (default 100)")
    p.add_argument("--templates", type=int, help="template groups (default 0)")
    p.add_argument("--subset", type=int, help="digits-dit: number n of training images")
    p.add_argument("--image-size", type=int, help="custom: square side the images are resized to")
    p.add_argument("--out", type=Path, metavar="DIR", help="exact checkpoint folder (default: "
                   "$DIFFMEM_HOME/worlds/<name>-<hash>; reused to resume)")
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
        return emit(args, {"config": config.to_dict(), "out": str(directory)})
    claim_out(directory)  # two trainings into one checkpoint folder would interleave their checkpoints
    path = train_world(config, directory, progress=progress_enabled(args))
    info = json.loads((path / "train.json").read_text())
    return emit(args, {"world": config.world.name, "steps": info["steps"], "seconds": round(info["wall_s"], 1),
                       "threads": args.threads, "out": str(path),
                       "next": f"diffmem world-report {path} --out REPORT_DIR"})
