"""End-to-end SN-Netv2 build on digits: two-way routes, low-rank LS stitches, ros sampling, pool file."""

from __future__ import annotations

import pytest
import torch

from stitchkit.engine import build_data, load_config
from stitchkit.engine.data import DataConfig
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import InitContext
from stitchkit.pool.lowrank import LowRankLinear
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry
from stitchkit.io.storage import load_descendant, load_pool
from stitchkit_snnet import plugin as snnet_plugin
from stitchkit_snnet.build import init_images
from stitchkit_snnet.ls import LeastSquaresInitializer
from stitchkit_snnetv2 import CONFIGS
from stitchkit_snnetv2 import plugin
from stitchkit_snnetv2.method import SNNetv2Method

def tiny_v2(tiny_config):
    return tiny_config(
        "snnetv2", ["3x16:2", "3x32:4"], train="seed = 0\nepochs = 1\nmax_steps = 4\nlr = 1e-3",
        section='init_images = 40\nstitch_rank = 2\nstitch_alpha = 4.0\ntrainable = "stitches"\n'
                "[snnetv2.sampler_args]\ngap_fraction = 0.2\n[snnetv2.finetune]\nmax_steps = 6\nlr = 1e-2")



@pytest.fixture(scope="module")
def registry():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(snnet_plugin, name="snnet")
    reg.register_plugin(plugin, name="snnetv2")
    return reg


def test_tiny_build_trains_the_update_not_the_ls_base(tmp_path, registry, tiny_config):
    cfg_path = tmp_path / "v2.toml"
    cfg_path.write_text(tiny_v2(tiny_config))
    config = load_config(cfg_path)
    out = tmp_path / "run"
    path = registry.method("snnetv2").build(config, out_dir=out, registry=registry)
    pool = load_pool(path, registry)
    assert pool.method == "snnetv2"
    assert [p.label for p in pool.paths] == ["anchor 0", "anchor 1", "sl 1", "sl 2", "ls 1", "ls 2", "lsl 1,2", "sls 1,2"]
    assert list(pool.stitches) == ["s0_1_0", "s0_1_1", "s1_0_0", "s1_0_1"]
    info = pool.info["snnetv2"]
    assert info["sampler"] == "ros" and info["stitch_rank"] == 2 and info["finetune_steps"] == 6
    # the same LS solve on the (untouched) anchors gives the stored base weights bit for bit
    anchors = [pool.adapters[i] for i in (0, 1)]
    fresh = Pool.from_method(SNNetv2Method(), anchors, stitch_rank=2, stitch_alpha=4.0)
    data = build_data(DataConfig.from_config(config))
    images = init_images(data, 40, 0)
    LeastSquaresInitializer().initialize(fresh, InitContext(images=images, seed=0))
    for name, layer in pool.stitches.items():
        assert isinstance(layer, LowRankLinear)
        assert torch.equal(layer.weight, fresh.stitches[name].weight), name  # frozen through fine-tuning
        assert torch.count_nonzero(layer.lora_B) > 0, name  # the update trained
    assert any(not torch.equal(layer.bias, fresh.stitches[n].bias) for n, layer in pool.stitches.items())
    x = torch.stack([data.test[i][0] for i in range(8)])
    pool.eval()
    for p in pool.paths:
        alone = load_descendant(path, p.name, registry).eval()  # merged on load
        assert not any(isinstance(m, LowRankLinear) for m in alone.modules())
        torch.testing.assert_close(alone(x), pool.descendant(p)(x), rtol=1e-5, atol=1e-5)
    assert set(pool.evaluation) == {p.name for p in pool.paths}


@pytest.mark.parametrize(
    "override, match",
    [
        ({"anchors": [{"shape": "2x16:2", "train": True}] * 3}, "exactly two anchors"),
        ({"routes": ["sl", "xx"]}, "routes: give a non-empty list"),
        ({"stitch_rank": -1}, "stitch_rank must be >= 0"),
        # (~6 s: the sampler is made after the anchors are trained)
        ({"sampler_args": {"gapp": 1}}, "sampler_args: sampler 'ros'.*gapp"),
    ],
)
def test_config_errors(tmp_path, registry, override, match, tiny_config):
    cfg_path = tmp_path / "v2.toml"
    cfg_path.write_text(tiny_v2(tiny_config))
    config = load_config(cfg_path)
    config["snnetv2"] = {**config["snnetv2"], **override}
    config["snnetv2"].setdefault("anchors", load_config(cfg_path)["snnetv2"]["anchors"])
    with pytest.raises(ConfigError, match=match):
        registry.method("snnetv2").build(config, out_dir=tmp_path / "run", registry=registry)


def test_shipped_digits_config_parses():
    from stitchkit.engine.config import section
    from stitchkit_snnetv2.config import SNNetv2Config

    config = load_config(CONFIGS / "digits.toml")
    cfg = section(config, "snnetv2", SNNetv2Config)
    assert cfg.method().routes == ("sl", "ls", "lsl", "sls") and cfg.stitch_rank == 8
