"""Embedded worlds with planted memorization: data, trained models and ground truth, built offline on CPU.

Worlds (``diffmem.worlds.registry.WORLDS``): ``digits-t2i`` (text-to-image digits; K images duplicated m times with
unique captions), ``digits-dit`` (class-conditional DiT on a small subset), ``digits-bench`` (graded memorization:
16×16 digit mosaics on a duplication ladder, template groups, hundreds of negatives), ``custom`` (your folder or
``.npz``).
``gmm`` (Gaussian mixtures, Ye et al.) lives in :mod:`diffmem.worlds.gmm`.

Typical use (heavy modules import on first use, so ``import diffmem`` stays light)::

    from diffmem.worlds.world import load_world          # trains on first use, then loads from $DIFFMEM_HOME
    world = load_world("digits-t2i")
    rows = [r for r in world.data.prompts if r["kind"] == "planted"]
    tr = diffmem.sample(world.denoiser, x_T, world.grid(50), world.cond_for(rows), solver=world.solver,
                        guidance=7.5)
    from diffmem.worlds.report import world_report       # summary.json: planted/non-planted copy rates per w
"""
