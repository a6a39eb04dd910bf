"""Low-rank stitch layers: merge, freezing, parameter counts, and the pool format extension."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import tiny_row
from stitchkit.core.errors import ConfigError, PoolFormatError
from stitchkit.pool.lowrank import LowRankConv2d, LowRankLinear, low_rank, low_rank_params, merge_low_rank, merged
from stitchkit.pool.measure import count_params
from stitchkit.pool.pool import Pool
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.spec import RowShape, StitchSpec
from stitchkit.io.storage import export_descendant, load_descendant, load_exported, load_pool, read_descendant_metadata, read_pool_metadata, save_pool


def trained(layer: nn.Module) -> nn.Module:
    """Give the update non-zero values, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_A.normal_()
    return layer


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 4), lambda: nn.Conv2d(6, 4, 1)], ids=["linear", "conv1x1"])
def test_merged_and_unmerged_forwards_agree(make):
    torch.manual_seed(0)
    base = make()
    x = torch.randn(3, 5, 6) if isinstance(base, nn.Linear) else torch.randn(3, 6, 2, 2)
    before = base(x)
    lr = low_rank(base, rank=2, alpha=4.0)
    assert lr.weight is base.weight and lr.bias is base.bias and not lr.weight.requires_grad
    torch.testing.assert_close(lr(x), before, rtol=0, atol=0)  # B starts at zero
    trained(lr)
    # the official formula: x @ W.T + b + scale * (x @ A.T) @ B.T, with scale = alpha / rank
    A, B, W, b = lr.lora_A, lr.lora_B, lr.weight.flatten(1), lr.bias
    xs = x if isinstance(base, nn.Linear) else x.movedim(1, -1)
    ref = xs @ W.T + b + 2.0 * (xs @ A.T) @ B.T
    ref = ref if isinstance(base, nn.Linear) else ref.movedim(-1, 1)
    out = lr(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    plain = merged(lr)
    assert type(plain) is type(base) and plain.weight.requires_grad
    torch.testing.assert_close(plain(x), out, rtol=0, atol=0)  # the same merged weight, the same op


def test_kaiming_a_zero_b_and_trainable_count():
    lr = low_rank(nn.Linear(384, 768), rank=64)
    assert isinstance(lr, LowRankLinear) and lr.scale == 1 / 64  # official: lora_alpha = 1
    assert torch.count_nonzero(lr.lora_B) == 0
    bound = 1 / math.sqrt(384)  # kaiming_uniform(a=sqrt(5)) on fan_in 384
    assert lr.lora_A.abs().max() <= bound and lr.lora_A.abs().max() > 0.9 * bound
    trainable = sum(p.numel() for p in lr.parameters() if p.requires_grad)
    assert trainable == 64 * 384 + 768 * 64 + 768  # A, B and the bias; the 768 x 384 weight is frozen
    assert low_rank_params(lr) == 64 * (384 + 768)


def test_bad_low_rank_input():
    with pytest.raises(ConfigError, match="rank >= 1"):
        low_rank(nn.Linear(3, 4), rank=0)
    with pytest.raises(ConfigError, match="groups = 1"):
        low_rank(nn.Conv2d(4, 4, 1, groups=2), rank=1)
    with pytest.raises(ConfigError, match="wrap nn.Linear or nn.Conv2d"):
        low_rank(nn.LayerNorm(3), rank=1)
    with pytest.raises(ConfigError, match="low-rank already"):
        low_rank(low_rank(nn.Linear(3, 4), rank=1), rank=1)
    with pytest.raises(ConfigError, match="alpha > 0, got 0.0"):
        LowRankConv2d(2, 2, 1, rank=1, alpha=0.0)
    with pytest.raises(ConfigError, match="stitch layer 's': rank must be >= 0"):
        StitchSpec("s", 0, 1, 2, 3, rank=-1)


def lowrank_pool(rank: int = 2) -> Pool:
    torch.manual_seed(0)
    rows = [tiny_row(RowShape(2, 16, 2)), tiny_row(RowShape(2, 32, 4))]
    return Pool.from_method(SequentialMethod(), rows, stitch_rank=rank, stitch_alpha=2.0)


def test_training_moves_the_update_and_bias_never_the_base():
    pool = lowrank_pool()
    name, layer = next(iter(pool.stitches.items()))
    base = layer.weight.detach().clone()
    path = next(p for p in pool.paths if p.stitches)
    d = pool.descendant(path)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(d(x), y).backward()
        opt.step()
    assert torch.equal(layer.weight, base)
    assert torch.count_nonzero(layer.lora_B) > 0
    # descendant costs count the merged layer: same as a full-rank pool's
    full = Pool.from_method(SequentialMethod(), [tiny_row(RowShape(2, 16, 2)), tiny_row(RowShape(2, 32, 4))])
    assert [c["params"] for c in pool.costs()] == [c["params"] for c in full.costs()]
    assert [c["macs"] for c in pool.costs()] == [c["macs"] for c in full.costs()]
    assert pool.storage_params() == full.storage_params() + 2 * (16 + 32) * len(pool.stitches)


def test_pool_file_keeps_the_update_and_exports_merge_it(tmp_path):
    pool = lowrank_pool()
    for layer in pool.stitches.values():
        trained(layer)
    f = save_pool(pool, tmp_path / "pool.safetensors")
    meta = read_pool_metadata(f)
    names = list(pool.stitches)
    assert names and all(s["rank"] == 2 and s["alpha"] == 2.0 for s in meta["pool"]["stitches"])
    for n in names:
        assert meta["tensors"][f"stitches.{n}.lora_A"]["shape"] == [2, 16]
        assert meta["tensors"][f"stitches.{n}.lora_B"]["shape"] == [32, 2]
    again = load_pool(f)
    x = torch.randn(2, 3, 16, 16)
    pool.eval(), again.eval()
    for path in pool.paths:
        want = pool.descendant(path)(x)
        torch.testing.assert_close(again.descendant(path)(x), want, rtol=0, atol=0)
        lazy = load_descendant(f, path.name).eval()
        assert not any(isinstance(m, LowRankLinear) for m in lazy.modules())
        torch.testing.assert_close(lazy(x), want, rtol=1e-6, atol=1e-6)
        out = export_descendant(f, path.name, tmp_path / "d.safetensors")
        exported = load_exported(out).eval()
        assert count_params(exported) == count_params(pool.descendant(path)) - low_rank_params(pool.descendant(path))
        torch.testing.assert_close(exported(x), want, rtol=1e-6, atol=1e-6)
    mem = export_descendant(pool, pool.paths[-1].name, tmp_path / "m.safetensors")
    assert all("rank" not in s for s in read_descendant_metadata(mem)["descendant"]["stitches"])
    assert isinstance(pool.stitches["s0_1_1"], LowRankLinear)  # exporting leaves the pool's layers low-rank


def test_evaluation_counts_a_descendant_as_exported():
    """A pool's evaluation records each descendant's deployed size: its low-rank updates merge away."""
    from torch.utils.data import DataLoader, TensorDataset

    from stitchkit.engine.evaluate import evaluate_pool

    pool = lowrank_pool().eval()
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))), batch_size=4)
    results = evaluate_pool(pool, loader)
    for path in pool.paths:
        plain = merge_low_rank(pool.descendant(path, copy=True))
        assert results[path.name]["params"] == count_params(plain)
    stitched = [p for p in pool.paths if p.stitches]
    # hand count: one stitch layer of the 16 -> 32 rows at rank 2 carries 2 * (16 + 32) update parameters
    assert stitched and all(count_params(pool.descendant(p)) - results[p.name]["params"] == 2 * (16 + 32) for p in stitched)


def test_older_full_rank_files_still_load_and_bad_lora_shapes_fail(tmp_path):
    plain = lowrank_pool(rank=0)
    f = save_pool(plain, tmp_path / "plain.safetensors")
    assert "rank" not in read_pool_metadata(f)["pool"]["stitches"][0]
    assert not any(isinstance(m, LowRankLinear) for m in load_pool(f).modules())
    pool = lowrank_pool()
    with torch.no_grad():
        pool.stitches["s0_1_1"].lora_A = nn.Parameter(torch.zeros(3, 16))
    with pytest.raises(PoolFormatError, match=r"lora_A' has shape \[3, 16\].*at rank 2 and needs \[2, 16\]"):
        save_pool(pool, tmp_path / "bad.safetensors")


def test_merge_low_rank_in_place():
    seq = nn.Sequential(low_rank(nn.Linear(3, 3), rank=1), nn.ReLU())
    assert merge_low_rank(seq) is seq and type(seq[0]) is nn.Linear
