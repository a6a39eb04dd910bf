"""Learngene Pool on the engine: distillation really trains (and leaves the ancestry
untouched), and a tiny end-to-end build on digits writes a valid, resumable pool file."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

from stitchkit.engine import DataConfig, TrainConfig, build_data, evaluate, fit, resolve
from stitchkit.engine.model import save_model
from stitchkit.core.errors import ConfigError, StitchkitError
from stitchkit.core.spec import RowShape
from stitchkit.io.storage import load_descendant, load_pool, read_pool_metadata
from stitchkit.families.vit import TimmViT
from stitchkit_learngene.distill import AuxiliaryDistillationTask
from stitchkit_learngene.extras import row_matrices
from stitchkit_learngene.losses import LearngeneDistillation

DATA = {"source": "digits", "img_size": 8, "in_chans": 1}
ANCESTRY = RowShape(4, 32, 2)
QUIET = {"progress": False, "eval_every": 0, "label_smoothing": 0.0}


@pytest.fixture(scope="module")
def data():
    return build_data(DataConfig(**DATA))


@pytest.fixture(scope="module")
def ancestry_file(tmp_path_factory, data) -> pathlib.Path:
    """A small ViT on digits, briefly trained (a real teacher, not a random one: ~60% top-1).

    Full-batch Adam on the un-augmented training images: a ViT on digits sits on
    a plateau for its first hundred mini-batch steps, which a unit test cannot
    afford; 60 full-batch steps get past it in seconds.
    """
    out = tmp_path_factory.mktemp("ancestry")
    torch.manual_seed(0)
    arch = {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": ANCESTRY.width,
            "depth": ANCESTRY.depth, "num_heads": ANCESTRY.heads}
    adapter = TimmViT.from_arch(arch)
    base = data.train.base  # the training images without augmentation
    x, y = (base.images - 0.5) / 0.5, base.labels
    opt = torch.optim.AdamW(adapter.model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(60):
        loss = F.cross_entropy(adapter.model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    adapter.model.eval()
    assert evaluate(adapter.model, data.test_loader())["top1"] > 40
    return save_model(adapter, out / "ancestry.safetensors")


def _load(path, registry) -> TimmViT:
    from stitchkit.engine import load_model

    return load_model(path, registry)


def test_distillation_trains_every_term_and_keeps_the_ancestry_frozen(tmp_path, data, ancestry_file, registry):
    ancestry = _load(ancestry_file, registry)
    before = {k: v.clone() for k, v in ancestry.model.state_dict().items()}
    shape = RowShape(3, 16, 2)
    torch.manual_seed(1)
    student = TimmViT.from_arch(ancestry.resized(shape))
    loss = registry.create("loss", "learngene", ancestry.shape, shape)
    assert isinstance(loss, LearngeneDistillation) and loss.pairs == [(0, 0), (2, 1), (3, 2)]  # dense for a narrower row
    w_before = [w.detach().clone() for w in loss.block_matrices()]
    images, _ = next(iter(data.eval_loader("val", batch_size=128)))

    def terms() -> dict[str, float]:
        student.model.eval()
        with torch.no_grad():
            t = ancestry.forward_taps(images, loss.teacher_taps())
            s = student.forward_taps(images, loss.student_taps())
            parts = {k: float(v) for k, v in loss.parts(s, t).items()}
            # soft cross-entropy = teacher entropy (a constant) + KL: the KL is what distillation can remove
            p = torch.softmax(t.logits, -1)
            parts["prediction"] -= float(-(p * torch.log_softmax(t.logits, -1)).sum(-1).mean())
            return parts

    start = terms()
    task = AuxiliaryDistillationTask(student, ancestry, loss, alpha=0.5)
    fit(task, data, TrainConfig(max_steps=100, batch_size=64, lr=5e-3, seed=0, **QUIET), out_dir=tmp_path, phase="distill")
    end = terms()
    print("distillation terms before / after:", start, end)
    # on held-out images the feature terms fall by at least half, the prediction KL by at least 15%
    # (measured: about -90%, -99% and -23% in this run)
    for name, kept in (("attention", 0.5), ("block", 0.5), ("prediction", 0.85)):
        assert end[name] < kept * start[name], (name, start[name], end[name])
    # the block-based matrices W were learned
    for w0, w1 in zip(w_before, loss.block_matrices()):
        assert (w1.detach() - w0).norm() > 1e-2 * w0.norm()
    # the ancestry is bit-identical and still frozen
    after = ancestry.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the per-term log exists
    rec = [json.loads(x) for x in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert {"attention", "block", "prediction", "ce"} <= set(rec[-1])


def _config(ancestry_file, **learngene) -> dict:
    return resolve({
        "method": "learngene-pool",
        "data": DATA,
        "train": {"batch_size": 32, "lr": 2e-3, **QUIET},
        "learngene": {
            "ancestry": str(ancestry_file),
            "rows": "3x16:2,3x32:2",
            "distill": {"max_steps": 4},
            "finetune": {"max_steps": 4},
            "init_images": 50,
            **learngene,
        },
    })


def test_tiny_build_writes_a_valid_resumable_pool(tmp_path, data, ancestry_file, registry):
    method = registry.method("learngene-pool")
    config = _config(ancestry_file, compare_initializers=["tm", "tm-pinv", "ls"])
    path = method.build(config, out_dir=tmp_path, registry=registry)
    meta = read_pool_metadata(path)["pool"]
    assert meta["method"] == "learngene-pool" and len(meta["paths"]) == 4
    # the learned W of the narrow row travel with the pool: 3 dense levels, (d, d') each
    pool = load_pool(path, registry)
    ws = row_matrices(pool.extras, 0, "W")
    assert [tuple(w.shape) for w in ws] == [(32, 16)] * 3 and row_matrices(pool.extras, 1, "W") == []
    info = meta["info"]["learngene"]
    assert info["levels"] == {"0": [[0, 0], [2, 1], [3, 2]], "1": [[3, 2]]} and info["initializer"] == "tm"
    assert set(info["after_init"]) == {"tm", "tm-pinv", "ls"}
    assert all(len(v) == 4 for v in info["after_init"].values())
    # every descendant loads on its own, runs, and its stored accuracy is a fresh evaluation's
    loader = data.test_loader()
    for i, p in enumerate(pool.paths):
        d = load_descendant(path, i, registry)
        stored = meta["evaluation"][p.name]
        fresh = evaluate(d, loader)
        assert stored["top1"] == pytest.approx(fresh["top1"])
        assert stored["params"] == sum(t.numel() for t in d.state_dict().values())
        assert stored["macs"] > 0
    # a rerun skips every finished phase: no step is taken again, the same pool comes out
    steps = {q.name: (q / "metrics.jsonl").read_text() for q in tmp_path.iterdir() if (q / "metrics.jsonl").exists()}
    assert set(steps) == {"distill-row0", "distill-row1", "finetune-tm"}
    path2 = method.build(config, out_dir=tmp_path, registry=registry)
    assert {q: (tmp_path / q / "metrics.jsonl").read_text() for q in steps} == steps
    again = load_pool(path2, registry)
    assert list(pool.state_dict()) == list(again.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(pool.state_dict().values(), again.state_dict().values()))
    # another initializer in the same directory reuses the distilled rows and only fine-tunes again
    path3 = method.build(
        _config(ancestry_file, compare_initializers=["tm", "tm-pinv", "ls"], initializer="ls", pool_file="pool-ls.safetensors"),
        out_dir=tmp_path, registry=registry,
    )
    assert {q: (tmp_path / q / "metrics.jsonl").read_text() for q in ("distill-row0", "distill-row1")} == {
        q: steps[q] for q in ("distill-row0", "distill-row1")
    }
    assert (tmp_path / "finetune-ls" / "metrics.jsonl").exists()
    assert read_pool_metadata(path3)["pool"]["info"]["learngene"]["initializer"] == "ls"


def test_sliding_window_method_builds_its_paths(tmp_path, ancestry_file, registry):
    config = _config(ancestry_file, distill={"max_steps": 1}, finetune={"max_steps": 1})
    path = registry.method("learngene-pool-sliding-window").build(config, out_dir=tmp_path, registry=registry)
    assert len(read_pool_metadata(path)["pool"]["paths"]) == 2 + 4 + 3 * (3 - 2)


@pytest.mark.parametrize(
    "learngene,match",
    [
        ({"rowz": "3x16:2"}, "did you mean 'rows'"),
        ({"alpha": 1.5}, "alpha"),
        ({"levels": "thick"}, "levels"),
        ({"distill": {"epoch": 3}}, "learngene.distill"),
        ({"initializer": "tmm"}, "unknown initializer 'tmm'; did you mean 'tm'"),
        ({"sampler": "unifrom"}, "unknown sampler 'unifrom'"),
        ({"initializer_args": {"lam": 0.01}}, r"learngene.initializer_args: initializer 'tm' has no option 'lam' \(accepted options: none\)"),
        ({"initializer": "tm-ls", "initializer_args": {"lam": 0.01}}, r"has no option 'lam' \(accepted options: ridge \(float, default 0.1\)\)"),
        ({"sampler_args": {"groups": 2}}, "sampler 'uniform' has no option 'groups'"),
        ({"design": "depth-reduced"}, r"design 'depth-reduced' needs option\(s\) depth"),
        ({"loss": "blok"}, "unknown loss 'blok'; did you mean 'block'"),
        ({"loss_args": {"alpha": 0.3}}, r"loss 'learngene' has no option 'alpha' \(accepted options: levels"),
        # a value of the wrong type, before data is read or a phase trains (not a TypeError after distillation)
        ({"initializer": "tm-ls", "initializer_args": {"ridge": "0.1"}},
         r"^learngene.initializer_args: initializer 'tm-ls': option 'ridge' must be a float, got '0.1' \(str\) "
         r"\(no quotes around a number in TOML\)$"),
        ({"loss_args": {"tau": True}}, r"loss 'learngene': option 'tau' must be a float, got True \(bool\)"),
        ({"loss_args": {"terms": "block"}}, r"loss 'learngene': option 'terms' must be a list of str, got 'block'"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, ancestry_file, registry, learngene, match):
    config = _config(ancestry_file)
    config["learngene"].update(learngene)
    with pytest.raises(StitchkitError, match=match):
        registry.method("learngene-pool").build(config, out_dir=tmp_path, registry=registry)
    assert not any(tmp_path.iterdir())  # refused before any phase ran


def test_ancestry_that_does_not_fit_the_data(tmp_path, ancestry_file, registry):
    config = _config(ancestry_file)
    config["data"]["img_size"] = 16
    with pytest.raises(ConfigError, match="does not fit the data"):
        registry.method("learngene-pool").build(config, out_dir=tmp_path, registry=registry)


def test_component_options_are_part_of_the_run_identity(tmp_path, ancestry_file, registry, capsys):
    """Options reach the component, are recorded in the pool, and a rerun with other options in the same
    directory never reuses a phase trained with the old ones: it stops naming the key."""
    from stitchkit.cli.main import main
    from stitchkit.core.errors import CheckpointError

    one_step = {"distill": {"max_steps": 1}, "finetune": {"max_steps": 1}}
    config = _config(ancestry_file, initializer="tm-ls", initializer_args={"ridge": 0.5}, loss="learngene",
                     loss_args={"terms": ["block", "prediction"]}, sampler="flops-grouped", sampler_args={"groups": 2},
                     **one_step)
    path = registry.method("learngene-pool").build(config, out_dir=tmp_path, registry=registry)
    components = read_pool_metadata(path)["pool"]["info"]["components"]
    assert components == {
        "ancestry": {"name": "timm-vit", "options": {}},
        "design": {"name": "pool", "options": {"rows": "3x16:2,3x32:2", "init": "random"}},
        "loss": {"name": "learngene", "options": {"levels": None, "tau": 1.0, "terms": ["block", "prediction"],
                                                  "reduction": "sum-classes"}},
        "initializer": {"name": "tm-ls", "options": {"ridge": 0.5}},
        "sampler": {"name": "flops-grouped", "options": {"groups": 2}},
    }
    # the loss got its terms: only the block and prediction terms were logged while distilling
    logged = json.loads((tmp_path / "distill-row0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "block" in logged and "prediction" in logged and "attention" not in logged
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["info"]["components"] == components
    assert main(["info", str(path)]) == 0
    assert "initializer: tm-ls (ridge=0.5)" in capsys.readouterr().out
    # another ridge: the finished fine-tuning phase is not reused
    changed = _config(ancestry_file, initializer="tm-ls", initializer_args={"ridge": 0.25}, loss="learngene",
                      loss_args={"terms": ["block", "prediction"]}, sampler="flops-grouped", sampler_args={"groups": 2},
                      **one_step)
    with pytest.raises(CheckpointError, match=r"finetune-tm-ls.*differing keys: config.learngene.initializer_args.ridge"):
        registry.method("learngene-pool").build(changed, out_dir=tmp_path, registry=registry)
    # another loss option: the distilled rows are not reused either
    changed["learngene"]["loss_args"] = {"terms": ["attention", "block", "prediction"]}
    with pytest.raises(CheckpointError, match=r"distill-row0.*differing keys: config.learngene.loss_args.terms"):
        registry.method("learngene-pool").build(changed, out_dir=tmp_path, registry=registry)


def test_design_drop_path_rate_reaches_the_rows_it_distils(tmp_path, ancestry_file, registry, monkeypatch):
    """``design_args.drop_path_rate`` (the authors' 0.1 in rows): every distilled row is built with timm's
    stochastic depth, block ``i`` of ``l`` dropping with ``rate * i / (l - 1)`` (timm's linear rule)."""
    from timm.layers import DropPath

    import stitchkit_learngene.pipeline as pipeline

    seen: list[list[float]] = []
    real_fit = pipeline.fit_together

    def recording_fit(students, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for s in students:
            if s.phase.startswith("distill"):
                seen.append([float(m.drop_prob) for b in s.task.student.blocks for m in b.modules() if isinstance(m, DropPath)])
        return real_fit(students, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_together", recording_fit)
    config = _config(ancestry_file, design_args={"drop_path_rate": 0.3}, distill={"max_steps": 1}, finetune={"max_steps": 1})
    registry.method("learngene-pool").build(config, out_dir=tmp_path, registry=registry)
    expected = [0.3 * i / 2 for i in (1, 2)]  # 3 blocks: 0, 0.15, 0.3 (block 0 has no DropPath at rate 0)
    assert len(seen) == 2  # two rows; drop_path1 and drop_path2 per block (timm stores the rates as float32)
    assert all(got == pytest.approx([p for p in expected for _ in range(2)], rel=1e-6) for got in seen)
    with pytest.raises(StitchkitError, match=r"drop_path_rate must be in \[0, 1\)"):
        registry.method("learngene-pool").build(_config(ancestry_file, design_args={"drop_path_rate": 1.0}),
                                                out_dir=tmp_path / "bad", registry=registry)
