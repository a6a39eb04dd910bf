"""Independent formulas the tests check stitchkit against (timm ViT, qkv bias, mlp ratio 4)."""

from __future__ import annotations

import torch

from stitchkit.core.spec import RowShape
from stitchkit.families.vit import TimmViT


def tiny_arch(shape: RowShape, img: int = 16, patch: int = 4, chans: int = 3, classes: int = 5) -> dict:
    return {
        "img_size": [img, img], "patch_size": [patch, patch], "in_chans": chans, "num_classes": classes,
        "embed_dim": shape.width, "depth": shape.depth, "num_heads": shape.heads,
        "mlp_ratio": 4.0, "qkv_bias": True, "class_token": True, "reg_tokens": 0,
        "no_embed_class": False, "global_pool": "token", "pre_norm": False, "fc_norm": False,
    }


def tiny_row(shape: RowShape, seed: int = 0, **kw) -> TimmViT:
    torch.manual_seed(seed)
    row = TimmViT.from_arch(tiny_arch(shape, **kw))
    row.model.eval()
    return row


def engine_vit(width: int = 16, depth: int = 2, heads: int = 2, classes: int = 4, drop_path: float = 0.0, seed: int = 0) -> TimmViT:
    """The engine tests' network: an 8x8 grey ViT of patch 4, seeded, in training mode."""
    torch.manual_seed(seed)
    return TimmViT.from_arch({"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": classes, "embed_dim": width,
                              "depth": depth, "num_heads": heads, "drop_path_rate": drop_path})


def engine_data(classes: int = 4):
    """The engine tests' data: 80 synthetic 8x8 images (64 train, 8 validation, 8 test)."""
    from stitchkit.engine import DataConfig, build_data

    return build_data(DataConfig(source="synthetic", img_size=8, synthetic_samples=80, synthetic_classes=classes,
                                 val_fraction=0.1, test_fraction=0.1))


def block_params(d: int) -> int:
    # norm1 (2d) + qkv (3d*d + 3d) + proj (d*d + d) + norm2 (2d) + fc1 (4d*d + 4d) + fc2 (4d*d + d)
    return 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + 4 * d * d + 4 * d + 4 * d * d + d


def stem_params(d: int, img: int, patch: int, chans: int) -> int:
    tokens = (img // patch) ** 2 + 1
    return chans * patch * patch * d + d + d + tokens * d  # conv weight + bias, cls token, pos embed


def head_params(d: int, classes: int) -> int:
    return 2 * d + d * classes + classes  # final norm + classifier


def block_macs(d: int, n: int) -> int:
    # qkv, proj, fc1, fc2 linear layers on n tokens + q@k^T and attn@v
    return n * d * 3 * d + n * d * d + n * d * 4 * d + n * 4 * d * d + 2 * n * n * d


def stem_macs(d: int, img: int, patch: int, chans: int) -> int:
    return (img // patch) ** 2 * d * chans * patch * patch


def identity_blocks(adapter: TimmViT) -> None:
    """Zero each residual branch's output so every block returns its input."""
    for blk in adapter.blocks:
        for lin in (blk.attn.proj, blk.mlp.fc2):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)


def tie_stems_affinely(front: TimmViT, end: TimmViT, a: torch.Tensor, c: torch.Tensor) -> None:
    """Make the end row's stem tokens equal ``a @ front stem tokens + c``, token by token
    (with identity blocks, every stitch place then sees an exact affine relation)."""
    fm, em = front.model, end.model
    with torch.no_grad():
        em.patch_embed.proj.weight.copy_(torch.einsum("oc,cikl->oikl", a, fm.patch_embed.proj.weight))
        em.patch_embed.proj.bias.copy_(a @ fm.patch_embed.proj.bias)
        em.pos_embed.copy_(fm.pos_embed @ a.T + c)
        em.cls_token.copy_(fm.cls_token @ a.T)


#: A Learngene Pool build on digits small enough to run whole in a test (seconds).
TINY_LEARNGENE_BUILD = """
method = "learngene-pool"
[data]
source = "digits"
img_size = 8
in_chans = 1
[model]
depth = 4
embed_dim = 32
num_heads = 2
patch_size = 2
[train]
batch_size = 32
lr = 2e-3
progress = false
eval_every = 0
[learngene]
rows = "2x16:2,2x32:2"
init_images = 40
ancestry_train = { max_steps = 3 }
distill = { max_steps = 2 }
finetune = { max_steps = 2 }
"""
