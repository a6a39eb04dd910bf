"""Plan figures of SN-Net on DeiT-Ti/S/B (meta device) against independent counts and the official numbers."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import block_macs, block_params, head_params, stem_macs, stem_params
from stitchkit.pool.measure import count_params
from stitchkit.pool.pool import Pool
from stitchkit.families.vit import TimmViT
from stitchkit_snnet.method import SNNetMethod

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
WIDTHS = [192, 384, 768]

# "params" of cfg_id 0..70 in ziplab/SN-Net stitching_deit/results/stitches_res.txt: the official
# code's count (a stitched configuration without the front anchor's cls token and position embedding).
OFFICIAL_PARAMS = [
    5717416, 22050664, 86567656, 22345960, 20571496, 22790824, 21016360, 19241896, 21461224, 19686760,
    17912296, 20131624, 18357160, 16582696, 18802024, 17027560, 15253096, 17472424, 15697960, 13923496,
    16142824, 14368360, 12593896, 14813224, 13038760, 11264296, 13483624, 11709160, 9934696, 12154024,
    10379560, 8605096, 10824424, 9049960, 7275496, 9494824, 7720360, 88190440, 81102568, 89964904,
    82877032, 75789160, 84651496, 77563624, 70475752, 79338088, 72250216, 65162344, 74024680, 66936808,
    59848936, 68711272, 61623400, 54535528, 63397864, 56309992, 49222120, 58084456, 50996584, 43908712,
    52771048, 45683176, 38595304, 47457640, 40369768, 33281896, 42144232, 35056360, 27968488, 36830824,
    29742952,
]


@pytest.fixture(scope="module")
def deit_pool():
    with torch.device("meta"):
        rows = [TimmViT.from_timm(n) for n in DEIT]
        pool = Pool.from_method(SNNetMethod(), rows)
    return rows, pool


@pytest.fixture(scope="module")
def published(deit_pool):
    """Published-convention params (no MACs: ``costs`` runs each descendant once, in the CLI test)."""
    pool = deit_pool[1]
    return [{"params": count_params(pool.descendant(p), convention="published")} for p in pool.paths]


def anchor_params(d: int) -> int:
    return stem_params(d, 224, 16, 3) + 12 * block_params(d) + head_params(d, 1000)


def test_counts_and_storage(deit_pool):
    rows, pool = deit_pool
    assert len(pool.paths) == 71 and len(pool.stitches) == 22
    for r, d in zip(rows, WIDTHS):
        assert sum(p.numel() for p in r.model.parameters()) == anchor_params(d)
    stitch = 11 * (192 * 384 + 384) + 11 * (384 * 768 + 768)
    storage = sum(anchor_params(d) for d in WIDTHS) + stitch
    assert pool.storage_params() == storage == 118_403_448  # SN-Net reports 118.4M


def test_published_convention_reproduces_official_table(published):
    assert [c["params"] for c in published] == OFFICIAL_PARAMS


def test_true_params_and_macs_by_formula(deit_pool, published):
    rows, pool = deit_pool
    true = pool.costs()
    n = 197
    for c, p, path in zip(true, published, pool.paths):
        if path.is_single_row:
            d = WIDTHS[path.rows[0]]
            assert c["params"] == p["params"] == anchor_params(d)
            assert c["macs"] == stem_macs(d, 224, 16, 3) + 12 * block_macs(d, n) + d * 1000
            continue
        (fa, fb), (ea, eb) = [(s.row, len(s)) for s in path.segments]
        df, de = WIDTHS[fa], WIDTHS[ea]
        params = stem_params(df, 224, 16, 3) + fb * block_params(df) + df * de + de + eb * block_params(de) + head_params(de, 1000)
        assert c["params"] == params
        assert p["params"] == params - (n + 1) * df  # without cls token and position embedding
        assert c["macs"] == stem_macs(df, 224, 16, 3) + fb * block_macs(df, n) + n * df * de + eb * block_macs(de, n) + de * 1000
    smallest = min(true, key=lambda c: c["params"])
    assert smallest["label"] == "anchor 0"


def test_cli_plan_lists_snnet_configurations(capsys):
    from stitchkit.cli.main import main

    assert main(["plan", "--method", "snnet", "--anchors", "deit_tiny_patch16_224,deit_small_patch16_224", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["descendants"]) == 2 + 34 and out["stitch_layers"] == 11
    assert out["storage_params"] == anchor_params(192) + anchor_params(384) + 11 * (192 * 384 + 384)
    assert [d["params_published"] for d in out["descendants"]] == OFFICIAL_PARAMS[:2] + OFFICIAL_PARAMS[3:37]  # official ids 3..36 are Ti->S
    assert out["descendants"][3]["label"] == "0->1 (0,1)"
    # method options: kernel 3 on 12 blocks gives 54 configurations on 10 layers (the official count)
    assert main(["plan", "--method", "snnet", "--anchors", "deit_tiny_patch16_224,deit_small_patch16_224",
                 "--option", "kernel_size=3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["descendants"]) == 2 + 54 and out["stitch_layers"] == 10
    assert main(["plan", "--method", "snnet", "--anchors", "deit_tiny_patch16_224", "--option", "kernel=3"]) == 2
    err = capsys.readouterr().err
    assert "method 'snnet' has no option 'kernel'" in err and "kernel_size (int, default 2)" in err  # the option and what is accepted
