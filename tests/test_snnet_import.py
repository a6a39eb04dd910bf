"""Importing official SN-Net checkpoints (``stitchkit import snnet``, ``stitchkit.import_snnet``).

The checkpoints are written here in the official layout as docs/snnet.md
specifies it (``anchors.<a>.<timm key>``, ``stitch_layers.<pair>.<layer>.transform.*``)
from random weights, and every configuration's logits are compared with a
forward written here after the official ``SNNet.forward``: the front anchor's
patch embedding, its blocks ``0..j``, the stitch, the end anchor's blocks
``k..``, then ``forward_head`` (no final norm); an anchor alone runs whole.
"""

from __future__ import annotations

import argparse
import itertools

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import stitchkit
from stitchkit.cli.main import main as cli_main
from stitchkit.core.errors import StitchkitError
from stitchkit.io.storage import export_descendant, load_descendant, load_exported, load_pool, save_pool

IMG, PATCH, CLASSES = 16, 8, 7
SHAPES = [(16, 2), (32, 4), (64, 8)]  # width, heads; DeiT-Ti/S/B in miniature


def anchors(depth: int) -> list[VisionTransformer]:
    torch.manual_seed(0)
    out = []
    for width, heads in SHAPES:
        m = VisionTransformer(img_size=IMG, patch_size=PATCH, num_classes=CLASSES, embed_dim=width, depth=depth, num_heads=heads)
        with torch.no_grad():  # non-trivial norms, so skipping one shows
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        out.append(m.eval())
    return out


def windows(depth: int, kernel: int = 2, stride: int = 1) -> list[tuple[tuple[int, int], int]]:
    """The official paired stitching, restated: a window of ``kernel`` ids moving by ``stride``."""
    cfgs: list[tuple[int, int]] = []
    out = []
    layer = 0
    for start in range(0, depth, stride):
        ids = list(range(start, min(start + kernel, depth)))
        new = [(j, k) for j in ids for k in ids if (j, k) not in cfgs]
        cfgs += new
        out += [(c, layer) for c in new]
        layer += bool(new)
    return out


def official_configs(n: int, depth: int, nearest: bool, kernel: int = 2, stride: int = 1) -> list[tuple]:
    """``(anchors, cuts, layers)`` in the official order: anchors, pairs, then chains of three."""
    rule = windows(depth, kernel, stride)
    combos = [c for size in (1, 2, 3) for c in itertools.combinations(range(n), size)]
    if nearest:
        combos = [c for c in combos if len(c) == 1 or (len(c) == 2 and c[1] == c[0] + 1)]
    out = []
    for c in combos:
        if len(c) == 1:
            out.append((c, (), ()))
        elif len(c) == 2:
            out += [(c, (cut,), (layer,)) for cut, layer in rule]
        else:
            out += [(c, (a, b), (la, lb)) for a, la in rule for b, lb in rule if b[0] >= a[1]]
    return out


def official_state(models, depth: int, nearest: bool, kernel: int = 2, stride: int = 1) -> dict[str, torch.Tensor]:
    n = len(models)
    pairs = [p for p in itertools.combinations(range(n), 2) if not nearest or p[1] == p[0] + 1]
    layers = 1 + max(layer for _, layer in windows(depth, kernel, stride))
    state = {f"anchors.{a}.{k}": v for a, m in enumerate(models) for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for c, (a, b) in enumerate(pairs):
        for layer in range(layers):
            w_in, w_out = models[a].embed_dim, models[b].embed_dim
            state[f"stitch_layers.{c}.{layer}.transform.weight"] = torch.randn(w_out, w_in, generator=g) * 0.3
            state[f"stitch_layers.{c}.{layer}.transform.bias"] = torch.randn(w_out, generator=g) * 0.1
    return state


def official_forward(models, state, nearest: bool, config: tuple, x: torch.Tensor) -> torch.Tensor:
    combo, cuts, layers = config
    if len(combo) == 1:
        return models[combo[0]](x)
    pairs = [p for p in itertools.combinations(range(len(models)), 2) if not nearest or p[1] == p[0] + 1]
    first = models[combo[0]]
    h = first._pos_embed(first.patch_embed(x))
    start = 0
    for i, ((j, k), layer) in enumerate(zip(cuts, layers)):
        for blk in models[combo[i]].blocks[start:j + 1]:
            h = blk(h)
        c = pairs.index((combo[i], combo[i + 1]))
        h = F.linear(h, state[f"stitch_layers.{c}.{layer}.transform.weight"], state[f"stitch_layers.{c}.{layer}.transform.bias"])
        start = k
    for blk in models[combo[-1]].blocks[start:]:
        h = blk(h)
    return models[combo[-1]].forward_head(h)


def names(depth: int) -> list[str]:
    return [f"{depth}x{w}:{h}" for w, h in SHAPES]


@pytest.fixture(scope="module")
def deit_like(tmp_path_factory):
    """12-block anchors (71 configurations), saved as the official main.py does (with its argparse namespace)."""
    models = anchors(12)
    state = official_state(models, 12, nearest=True)
    path = tmp_path_factory.mktemp("official") / "checkpoint.pth"
    torch.save({"model": state, "epoch": 49, "args": argparse.Namespace(model="snnet", stitch_stride=1)}, path)
    return models, state, path


def test_every_configuration_matches_the_official_forward(deit_like, tmp_path):
    models, state, path = deit_like
    pool = stitchkit.import_snnet(path, names(12))
    configs = official_configs(3, 12, nearest=True)
    assert len(configs) == len(pool.paths) == 71
    assert pool.stitched_final_norm is False
    x = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for config, path_ in zip(configs, pool.paths):
            combo, cuts, _ = config
            assert [s.row for s in path_.segments] == list(combo)
            assert torch.equal(pool.descendant(path_).eval()(x), official_forward(models, state, True, config, x)), path_.label
        # the norm is what differs: a native pool (norm kept) gives other logits on stitched paths only
        native = stitchkit.Pool(pool.adapters, list(pool.stitch_specs.values()), pool.paths, method="snnet")
        native.stitches.load_state_dict(pool.stitches.state_dict())
        assert torch.equal(native.descendant(0)(x), pool.descendant(0)(x))
        assert not torch.allclose(native.descendant(3)(x), pool.descendant(3)(x), atol=1e-3)
        pool.stitched_final_norm = True  # switching the option rebuilds cached descendants
        assert torch.equal(pool.descendant(3).eval()(x), native.descendant(3).eval()(x))
        pool.stitched_final_norm = False
        assert torch.equal(pool.descendant(3).eval()(x), official_forward(models, state, True, configs[3], x))
        # the option survives the pool file, a lazily read descendant and an exported one
        saved = save_pool(pool, tmp_path / "pool.safetensors")
        again = load_pool(saved)
        assert again.stitched_final_norm is False
        want = official_forward(models, state, True, configs[40], x)
        assert torch.equal(again.descendant(40).eval()(x), want)
        assert torch.equal(load_descendant(saved, 40).eval()(x), want)
        export_descendant(saved, 40, tmp_path / "d.safetensors")
        assert torch.equal(load_exported(tmp_path / "d.safetensors").eval()(x), want)


def test_non_neighbouring_checkpoint_and_window_options(tmp_path):
    """nearest_stitching = False (read from the checkpoint), kernel 3 / stride 2: pairs 0-1, 0-2, 1-2 and chains 0-1-2."""
    depth = 5
    models = anchors(depth)
    state = official_state(models, depth, nearest=False, kernel=3, stride=2)
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)  # a bare state dict works too
    pool = stitchkit.import_snnet(path, names(depth), kernel_size=3, stride=2)
    configs = official_configs(3, depth, nearest=False, kernel=3, stride=2)
    assert len(pool.paths) == len(configs)
    assert sum(len(c[0]) == 3 for c in configs) > 0
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for config, p in zip(configs, pool.paths):
            assert torch.equal(pool.descendant(p).eval()(x), official_forward(models, state, False, config, x)), p.label


def test_import_errors_name_the_key_and_the_fix(deit_like, tmp_path):
    models, state, path = deit_like
    with pytest.raises(StitchkitError, match=r"anchors\.0\.cls_token has shape \(1, 1, 16\) but 12x32:4 expects"):
        stitchkit.import_snnet(path, [names(12)[1], names(12)[0], names(12)[2]])
    with pytest.raises(StitchkitError, match="holds anchors \\[0, 1, 2\\] but 2 were named"):
        stitchkit.import_snnet(path, names(12)[:2])
    with pytest.raises(StitchkitError, match="kernel_size 3 and stride 1 on 12 blocks give 10; pass the training run's"):
        stitchkit.import_snnet(path, names(12), kernel_size=3)
    bad = tmp_path / "extra.pth"
    torch.save({**state, "teacher.weight": torch.zeros(1)}, bad)
    with pytest.raises(StitchkitError, match="unexpected key 'teacher.weight'"):
        stitchkit.import_snnet(bad, names(12))
    wrong = tmp_path / "wrong.pth"
    torch.save({**state, "stitch_layers.1.3.transform.weight": torch.zeros(64, 16)}, wrong)
    with pytest.raises(StitchkitError, match=r"stitch_layers\.1\.3\.transform\.weight has shape \(64, 16\) but anchors 1 -> 2"):
        stitchkit.import_snnet(wrong, names(12))
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": state, "extra": torch.nn.Identity()}, pickled)  # a module: only a full unpickle could read it
    with pytest.raises(StitchkitError, match="cannot be read as a weights-only torch checkpoint"):
        stitchkit.import_snnet(pickled, names(12))
    with pytest.raises(StitchkitError, match="no such checkpoint file"):
        stitchkit.import_snnet(tmp_path / "missing.pth", names(12))


def test_cli_import_writes_a_pool(deit_like, tmp_path, capsys):
    _, _, path = deit_like
    out = tmp_path / "imported.safetensors"
    assert cli_main(["import", "snnet", str(path), "--anchors", ",".join(names(12)), "-o", str(out), "--option", "stride=1"]) == 0
    assert "71 descendants on 22 stitch layers" in capsys.readouterr().out
    assert load_pool(out).stitched_final_norm is False
    assert cli_main(["import", "snnet", str(path), "--anchors", ",".join(names(12)), "-o", str(out), "--option", "kernel_size=3"]) == 2
    assert "pass the training run's --stitch_kernel_size" in capsys.readouterr().err
    assert cli_main(["import", "sequential", str(path), "--anchors", "a,b", "-o", str(out)]) == 2
    assert "cannot import checkpoints" in capsys.readouterr().err
