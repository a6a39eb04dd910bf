"""MACs and params against hand counts; the published counting convention; latency."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from helpers import block_macs, stem_macs, tiny_row
from stitchkit.pool.measure import count_macs, count_params, measure_latency
from stitchkit.pool.pool import Pool
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.spec import RowShape
from stitchkit.families.vit import TimmViT


def test_macs_of_a_stitched_descendant_match_hand_count():
    img, patch, classes = 16, 4, 5
    n = (img // patch) ** 2 + 1
    rows = [tiny_row(RowShape(3, 16, 2), img=img, patch=patch, classes=classes),
            tiny_row(RowShape(3, 32, 4), img=img, patch=patch, classes=classes)]
    pool = Pool.from_method(SequentialMethod(), rows)
    d = pool.descendant("r0[0:2]+s0_1_2+r1[2:3]")
    expected = stem_macs(16, img, patch, 3) + 2 * block_macs(16, n) + n * 16 * 32 + block_macs(32, n) + 32 * classes
    assert count_macs(d) == expected


def test_deit_base_macs_and_params_on_meta_device():
    with torch.device("meta"):
        deit = TimmViT.from_timm("deit_base_patch16_224")
    d, n = 768, 197
    expected_macs = stem_macs(d, 224, 16, 3) + 12 * block_macs(d, n) + d * 1000
    assert count_macs(deit) == expected_macs  # 17.56 G, fvcore's 17.58 G less norms
    # a bare module has no declared attention: only its Linear and Conv layers are counted
    assert count_macs(deit.model, (3, 224, 224)) == expected_macs - 12 * 2 * n * n * d
    assert count_params(deit.model) == 86_567_656


def test_published_convention_drops_cls_and_pos_embed_of_stitched_only():
    rows = [tiny_row(RowShape(2, 16, 2)), tiny_row(RowShape(2, 32, 4))]
    pool = Pool.from_method(SequentialMethod(), rows)
    stitched = pool.descendant("r0[0:1]+s0_1_1+r1[1:2]")
    single = pool.descendant("r1[0:2]")
    n = (16 // 4) ** 2 + 1
    assert count_params(stitched) - count_params(stitched, convention="published") == 16 + n * 16
    assert count_params(single) == count_params(single, convention="published")


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    seq = nn.Sequential(lin, lin)
    assert count_params(seq) == 20


class _Sleeper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        time.sleep(0.002)
        return x


def test_latency_is_the_median_of_timed_runs(monkeypatch):
    """A scripted clock: warm-up runs are dropped and the median (not the mean) of the timed runs returned."""
    import types

    import stitchkit.pool.measure as measure

    ticks = [0.0]  # the warm-up run reads the clock once and is not timed
    for d in (0.005, 0.001, 0.009, 0.003, 0.100):  # seconds: 5 timed runs, a start and an end read each
        ticks += [ticks[-1] + 1.0, ticks[-1] + 1.0 + d]
    clock = iter(ticks)
    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    ms = measure_latency(_Sleeper(), (1,), warmup=1, repeats=5)
    assert ms == pytest.approx(5.0, abs=1e-9)  # median of 5, 1, 9, 3, 100 ms; the mean would be 23.6
    assert next(clock, None) is None  # every scripted reading used: 1 warm-up + 5 timed runs, none extra
