"""Learngene Pool (Shi et al., AAAI 2024) as a stitchkit plugin.

Auxiliary models are distilled from a frozen ancestry (attention, block and
prediction distillation with learnable transformation matrices), their
blocks become the rows of a pool, stitch layers are initialised from the
learned matrices (TM), and the pool is fine-tuned one sampled path per step.
Loaded through the ``stitchkit`` entry point ``stitchkit_learngene.plugin``.

Build configs ship in :data:`CONFIGS`: ``learngene_digits.toml`` (minutes on a
CPU) and the paper's designs ``learngene_deit_base_l6.toml`` /
``learngene_deit_base_l9.toml``. See docs/learngene_pool.md.
"""

import pathlib

CONFIGS = pathlib.Path(__file__).parent / "configs"
