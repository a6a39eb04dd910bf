"""Learngene Pool's rows distilled together and pools fine-tuned together: the same pools as one at a time."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from stitchkit.core.errors import ConfigError
from test_learngene_build import _config, ancestry_file, data  # noqa: F401 - fixtures (registry: conftest)


def _pools_equal(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_two_pools_built_together_equal_separate_builds_one_at_a_time(tmp_path, ancestry_file, registry):
    method = registry.method("learngene-pool")
    tm = _config(ancestry_file, pool_file="pool-tm.safetensors")
    ls = _config(ancestry_file, initializer="ls", pool_file="pool-ls.safetensors")
    together = method.build_together([tm, ls], out_dir=tmp_path / "together", registry=registry)
    apart = [method.build({**c, "learngene": {**c["learngene"], "together": False}}, out_dir=tmp_path / "apart", registry=registry)
             for c in (tm, ls)]
    assert [p.name for p in together] == ["pool-tm.safetensors", "pool-ls.safetensors"]
    for a, b in zip(together, apart):
        assert _pools_equal(a, b), a.name
    runs = [json.loads(x) for x in (tmp_path / "together" / "runs.jsonl").read_text().splitlines()]
    assert {r["phase"]: r.get("together_with") for r in runs} == {
        "distill-row0": ["distill-row1"], "distill-row1": ["distill-row0"],
        "finetune-tm": ["finetune-ls"], "finetune-ls": ["finetune-tm"],
    }
    apart_runs = [json.loads(x) for x in (tmp_path / "apart" / "runs.jsonl").read_text().splitlines()]
    assert not any("together_with" in r for r in apart_runs)
    # the same phases in the same folders: a build together resumes what separate builds trained, and skips it
    again = method.build_together([tm, ls], out_dir=tmp_path / "apart", registry=registry)
    assert all(_pools_equal(a, b) for a, b in zip(again, apart))


def test_pools_built_together_must_share_their_distillation(tmp_path, ancestry_file, registry):
    method = registry.method("learngene-pool")
    tm = _config(ancestry_file)
    with pytest.raises(ConfigError, match="distinct initializers"):
        method.build_together([tm, tm], out_dir=tmp_path, registry=registry)
    other = _config(ancestry_file, initializer="ls", alpha=0.1)
    with pytest.raises(ConfigError, match="differ in a setting distillation depends on"):
        method.build_together([tm, other], out_dir=tmp_path, registry=registry)


def test_a_build_trained_in_bf16_saves_float32_weights(tmp_path, ancestry_file, registry):
    """bf16 autocast in every phase (rows distilled together, the pool fine-tuned): the pool file holds float32."""
    config = _config(ancestry_file, distill={"max_steps": 2}, finetune={"max_steps": 2})
    config["train"]["precision"] = "bf16"
    path = registry.method("learngene-pool").build(config, out_dir=tmp_path, registry=registry)
    tensors = load_file(str(path))
    assert tensors and {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}
    records = [json.loads(x) for x in (tmp_path / "distill-row0" / "metrics.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r["loss"]) for r in records if "loss" in r)
