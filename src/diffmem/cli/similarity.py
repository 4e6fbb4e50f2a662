"""``diffmem similarity``: copy criteria and duplicate counts on tensors saved as safetensors; the digits classifier.

  diffmem similarity memorization --samples gen.safetensors --refs train.safetensors
  diffmem similarity duplicates --refs train.safetensors [--threshold 0.1 --metric normalized_l2]
  diffmem similarity classifier [--retrain]
"""

from __future__ import annotations

import math

from diffmem.cli.common import add_command, add_common, emit

__all__ = ["add_parser"]


def _memorization(args) -> int:
    from diffmem.similarity.inputs import load_tensor, memorization_summary

    samples, refs = load_tensor(args.samples, args.samples_key), load_tensor(args.refs, args.refs_key)
    return emit(args, memorization_summary(samples, refs, threshold=args.threshold, k=args.k,
                                           dedup=not args.no_dedup, backend=args.backend))


def _duplicates(args) -> int:
    t = args.threshold
    if t is not None and not (math.isfinite(t) and (-1 <= t <= 1 if args.metric == "cosine" else t >= 0)):
        raise ValueError(f"--threshold {t!r} is not a {args.metric} threshold; give a finite number "
                         f"{'in [-1, 1]' if args.metric == 'cosine' else '>= 0'}")
    from diffmem.similarity.duplicates import exact_duplicates, near_duplicates
    from diffmem.similarity.inputs import load_tensor

    refs = load_tensor(args.refs, args.refs_key)
    res = exact_duplicates(refs) if args.threshold is None else near_duplicates(refs, args.threshold,
                                                                                metric=args.metric)
    return emit(args, {**res.summary(), "largest_groups": sorted(res.groups, key=len, reverse=True)[:5]})


def _classifier(args) -> int:
    from diffmem.similarity.digits_classifier import load_digits_classifier

    clf = load_digits_classifier(retrain=args.retrain)
    return emit(args, {"path": str(clf.path), "test_accuracy": clf.test_accuracy, "sha256": clf.sha256})


def add_parser(sub) -> None:
    p = add_command(sub, "similarity", __doc__)
    cmds = p.add_subparsers(dest="similarity_command", metavar="WHAT", required=True)
    m = cmds.add_parser("memorization", help="nearest-neighbour ratio (memorization ratio) and relative distance")
    m.add_argument("--samples", required=True, help="safetensors file with generated samples [N, ...]")
    m.add_argument("--refs", required=True, help="safetensors file with training images [M, ...]")
    m.add_argument("--samples-key", help="tensor name in --samples (default: its only tensor)")
    m.add_argument("--refs-key", help="tensor name in --refs (default: its only tensor)")
    m.add_argument("--threshold", type=float, default=1 / 3, help="copy if ratio <= this (default: 1/3)")
    m.add_argument("--k", type=int, default=50, help="neighbours in the relative distance (default: %(default)s)")
    m.add_argument("--no-dedup", action="store_true", help="keep exact duplicates in the reference set")
    m.add_argument("--backend", choices=("torch", "faiss"), default="torch", help="k-NN backend (default: torch)")
    add_common(m, out=None, seed=None, dry_run=False)
    m.set_defaults(run=_memorization)
    d = cmds.add_parser("duplicates", help="exact or near-duplicate groups of a training set")
    d.add_argument("--refs", required=True, help="safetensors file with training images [M, ...]")
    d.add_argument("--refs-key", help="tensor name in --refs (default: its only tensor)")
    d.add_argument("--threshold", type=float, help="near-duplicate threshold (default: exact duplicates only)")
    d.add_argument("--metric", choices=("l2", "normalized_l2", "cosine"), default="normalized_l2",
                   help="distance for --threshold (default: %(default)s)")
    add_common(d, out=None, seed=None, dry_run=False)
    d.set_defaults(run=_duplicates)
    c = cmds.add_parser("classifier", help="train or load the embedded digits classifier; print its accuracy")
    c.add_argument("--retrain", action="store_true", help="train again even when cached")
    add_common(c, out=None, seed=None, dry_run=False)
    c.set_defaults(run=_classifier)
