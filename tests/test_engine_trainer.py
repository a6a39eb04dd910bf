"""The training loop, its tasks, checkpoints and evaluation, in-process on tiny models."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from stitchkit.engine import (
    Callback,
    ClassificationTask,
    DataConfig,
    DistillationTask,
    PoolTask,
    TrainConfig,
    build_data,
    evaluate,
    evaluate_pool,
    fit,
    format_table,
    learning_rate,
    load_model,
    model_info,
    train_model,
)
from stitchkit.engine.data import derive_seed
from stitchkit.engine.trainer import param_groups
from stitchkit.core.errors import CheckpointError, ConfigError, PoolFormatError
from stitchkit.core.interfaces import DistillationLoss, TapRequest
from stitchkit.pool.measure import count_macs, count_params
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry

from helpers import engine_data, engine_vit

REG = Registry(load_entrypoints=False)



vit = engine_vit


@pytest.fixture(scope="module")
def data():
    return engine_data()


def tiny_pool(seed=0):
    return Pool.from_method(REG.method("sequential"), [vit(16, 3, seed=seed), vit(32, 3, seed=seed + 1)])


def cfg(**kw):
    base = dict(epochs=1, batch_size=16, lr=1e-3, device="cpu", log_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- schedule and groups
def test_learning_rate_warmup_then_cosine():
    lrs = [learning_rate(s, total=6, warmup=2, lr=1.0, min_lr=0.0) for s in range(7)]
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(2, 7)]
    assert lrs == pytest.approx(expected)
    assert lrs[4] == pytest.approx(0.5) and lrs[6] == pytest.approx(0.0)
    assert learning_rate(0, total=10, warmup=0, lr=2.0, min_lr=0.5) == pytest.approx(2.0)


def test_weight_decay_only_on_matrices():
    model = vit().model
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n, p in model.named_parameters() if p.ndim <= 1 or n in ("pos_embed", "cls_token")
    }
    assert "patch_embed.proj.weight" in {names[id(p)] for p in decay["params"]}  # 4-d conv weight decays
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


# --------------------------------------------------------------------------- path sampling
def test_params_outside_the_sampled_path_are_bit_identical(data, tmp_path):
    pool = tiny_pool()
    before = {n: p.detach().clone() for n, p in pool.named_parameters()}
    sampler = REG.create("sampler", "uniform", pool.paths)
    task = PoolTask(pool, sampler)
    seen = {}

    class Seen(Callback):
        def after_backward(self, st):
            seen["paths"] = st.paths
            seen["grads"] = {n: p.grad.detach().clone() for n, p in pool.named_parameters() if p.grad is not None}

    train = cfg(max_steps=1, weight_decay=0.1, clip_grad=0.5, label_smoothing=0.1, seed=3)
    fit(task, data, train, out_dir=tmp_path, phase="p", callbacks=[Seen()])

    # the path: drawn from a generator seeded by (seed, step 0), as every rank would
    g = torch.Generator().manual_seed(derive_seed("path", 3, 0))
    path = pool.paths[int(torch.randint(len(pool.paths), (1,), generator=g))]
    assert seen["paths"] == [path.name]

    # reference step, computed by hand on a copy: CE with label smoothing, clip, AdamW step 1
    ref = copy.deepcopy(tiny_pool())
    images, targets = next(iter(data.train_loader(16, epoch=0, seed=3)))
    loss = F.cross_entropy(ref.descendant(path)(images), targets, label_smoothing=0.1)
    loss.backward()
    used = {n for n, p in ref.named_parameters() if p.grad is not None}
    assert set(seen["grads"]) == used  # only the path's parameters got gradients
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in ref.parameters() if p.grad is not None))
    coef = min(1.0, 0.5 / (float(norm) + 1e-6))
    for n, p in pool.named_parameters():
        if n not in used:
            assert torch.equal(p, before[n]), n  # no decay, no moment update
            continue
        g = dict(ref.named_parameters())[n].grad * coef
        wd = 0.0 if p.ndim <= 1 or n.split(".")[-1] in ("pos_embed", "cls_token") else 0.1
        expected = before[n] * (1 - 1e-3 * wd) - 1e-3 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, atol=2e-6, rtol=0)
    assert len(used) < len(before)


def test_sandwich_sampler_trains_three_paths_in_one_step(data, tmp_path):
    pool = tiny_pool()
    macs = [c["macs"] for c in pool.costs()]
    task = PoolTask(pool, REG.create("sampler", "sandwich", pool.paths, macs))
    got = {}

    class Got(Callback):
        def after_backward(self, st):
            got["paths"] = st.paths
            got["grad"] = {n for n, p in pool.named_parameters() if p.grad is not None}

    fit(task, data, cfg(max_steps=1), out_dir=tmp_path, phase="p", callbacks=[Got()])
    assert len(got["paths"]) == 3 and got["paths"][0] == pool.paths[0].name and got["paths"][1] == pool.paths[-1].name
    names = {id(p): n for n, p in pool.named_parameters()}
    union = {names[id(p)] for name in got["paths"] for p in pool.descendant(name).parameters()}
    assert got["grad"] == union


# --------------------------------------------------------------------------- tasks
def test_classification_learns_and_finished_phase_is_skipped(data, tmp_path):
    model = vit(classes=4)
    res = fit(ClassificationTask(model.model), data, cfg(epochs=4, lr=3e-3, warmup_epochs=0.5), out_dir=tmp_path, phase="anc")
    lines = [json.loads(x) for x in (tmp_path / "anc" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert res.steps == 4 * (64 // 16) == len(losses)
    assert sum(losses[-3:]) < sum(losses[:3])  # it learns
    assert {"val_top1", "val_loss"} <= {k for r in lines for k in r}
    assert all(r["images_per_s"] > 0 for r in lines if "loss" in r)
    # a finished phase is not retrained: its weights are loaded into the new model
    fresh = vit(classes=4, seed=9)
    again = fit(ClassificationTask(fresh.model), data, cfg(epochs=4, lr=3e-3, warmup_epochs=0.5), out_dir=tmp_path, phase="anc")
    assert again.steps == res.steps
    assert list(model.model.state_dict()) == list(fresh.model.state_dict())  # zip below would hide a missing key
    for (n, a), b in zip(model.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert len((tmp_path / "anc" / "metrics.jsonl").read_text().splitlines()) == len(lines)


class LastBlockMSE(DistillationLoss):
    """MSE(teacher last block @ W, student last block), with a learnable W."""

    name = "test-last-block"

    def __init__(self, teacher_width, student_width, teacher_last):
        super().__init__()
        self.W = nn.Parameter(torch.randn(teacher_width, student_width) * 0.1)
        self.t = teacher_last

    def teacher_taps(self):
        return TapRequest(blocks=(self.t,))

    def student_taps(self):
        return TapRequest(blocks=(1,))

    def forward(self, student, teacher):
        return F.mse_loss(teacher.blocks[self.t] @ self.W, student.blocks[1])


def test_distillation_trains_student_and_W_with_one_frozen_teacher_pass(data, tmp_path):
    teacher, student = vit(32, 3, seed=1), vit(16, 2, seed=2)
    t_before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.model.state_dict().items()}
    loss = LastBlockMSE(32, 16, teacher_last=2)
    w_before = loss.W.detach().clone()
    calls, frozen = [], []
    teacher.model.patch_embed.register_forward_hook(lambda *a: calls.append(1))

    class Frozen(Callback):
        def fit_end(self, st):
            frozen.append(not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters()))

    res = fit(DistillationTask(student, teacher, loss, alpha=0.5), data, cfg(max_steps=3, eval_every=0), out_dir=tmp_path, phase="d", callbacks=[Frozen()])
    assert res.steps == 3 and len(calls) == 3  # the teacher ran once per step, taps and logits from one pass
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.model.state_dict().items())
    assert frozen == [True]  # frozen while training ...
    assert all(p.requires_grad for p in teacher.model.parameters())  # ... and given back as it was
    assert not torch.equal(loss.W.detach(), w_before)
    assert any(not torch.equal(v, s_before[k]) for k, v in student.model.state_dict().items())
    rec = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()][-1]
    assert rec["loss"] == pytest.approx(0.5 * rec["ce"] + 0.5 * rec["distill"], rel=1e-6)


def test_pool_distillation_modes():
    pool, teacher = tiny_pool(), vit(32, 3)
    sampler = REG.create("sampler", "uniform", pool.paths)
    with pytest.raises(ConfigError, match="needs a teacher"):
        PoolTask(pool, sampler, distillation="soft")
    with pytest.raises(ConfigError, match="one of none, soft, hard"):
        PoolTask(pool, sampler, teacher=teacher, distillation="kl")
    from stitchkit.engine.tasks import Batch
    from stitchkit.core.interfaces import Taps

    torch.manual_seed(0)
    images, targets = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    t_logits = torch.randn(5, 4)
    path = pool.paths[3]
    logits = pool.descendant(path)(images)
    ce = F.cross_entropy(logits, targets)
    soft_ref = -(F.softmax(t_logits / 2.0, -1) * F.log_softmax(logits / 2.0, -1)).sum(-1).mean()
    soft, _ = PoolTask(pool, sampler, teacher, "soft", tau=2.0).loss(pool, Batch(images, targets), Taps(t_logits), path)
    hard, _ = PoolTask(pool, sampler, teacher, "hard").loss(pool, Batch(images, targets), Taps(t_logits), path)
    torch.testing.assert_close(soft, ce + soft_ref)
    torch.testing.assert_close(hard, (ce + F.cross_entropy(logits, t_logits.argmax(-1))) / 2)


# --------------------------------------------------------------------------- checkpoints
def test_resume_from_a_mid_epoch_checkpoint_is_bit_exact_with_dropout(data, tmp_path):
    """In-process version of the kill test, with drop-path: the RNG state must be restored."""
    train = cfg(epochs=2, checkpoint_every=3, keep_checkpoints=50)
    full = vit(drop_path=0.3, seed=4)
    fit(ClassificationTask(full.model), data, train, out_dir=tmp_path / "a", phase="p")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ck = tmp_path / "b" / "p" / "checkpoints"
    for f in ck.iterdir():
        if int(f.name[5:13]) > 3:  # keep only step 3 (epoch 0, batch 3)
            f.unlink()
    assert json.loads((ck / "step-00000003.json").read_text())["batch"] == 3
    resumed = vit(drop_path=0.3, seed=4)
    torch.manual_seed(12345)  # whatever this process did before must not matter
    res = fit(ClassificationTask(resumed.model), data, train, out_dir=tmp_path / "b", phase="p")
    assert res.steps == 8
    assert list(full.model.state_dict()) == list(resumed.model.state_dict())
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n


@pytest.fixture()
def finished_run(data, tmp_path):
    model = vit()
    fit(ClassificationTask(model.model), data, cfg(max_steps=2, lr=1e-3), out_dir=tmp_path, phase="p", config={"x": 1})
    return tmp_path, sorted((tmp_path / "p" / "checkpoints").glob("step-*.json"))[-1]


def test_checkpoint_from_another_config_is_refused(data, finished_run):
    out, _ = finished_run
    with pytest.raises(CheckpointError) as info:
        fit(ClassificationTask(vit().model), data, cfg(max_steps=2, lr=2e-3), out_dir=out, phase="p", config={"x": 2})
    msg = str(info.value)
    assert "config.x" in msg and "train.lr" in msg and "different config" in msg


def test_corrupt_checkpoints_are_refused(data, finished_run):
    out, meta = finished_run
    weights = meta.with_suffix(".safetensors")
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        fit(ClassificationTask(vit().model), data, cfg(max_steps=2, lr=1e-3), out_dir=out, phase="p", config={"x": 1})
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        fit(ClassificationTask(vit().model), data, cfg(max_steps=2, lr=1e-3), out_dir=out, phase="p", config={"x": 1})
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        fit(ClassificationTask(vit().model), data, cfg(max_steps=2, lr=1e-3), out_dir=out, phase="p", config={"x": 1})


def test_checkpoint_for_another_model_is_refused(data, finished_run):
    out, _ = finished_run
    with pytest.raises(CheckpointError, match="does not fit the model"):
        fit(ClassificationTask(vit(width=32).model), data, cfg(max_steps=2, lr=1e-3), out_dir=out, phase="p", config={"x": 1})


def test_checkpoint_files_hold_optimizer_state_and_rng(finished_run):
    from safetensors import safe_open

    _, meta_path = finished_run
    meta = json.loads(meta_path.read_text())
    assert meta["step"] == 2 and meta["finished"] is True and meta["rng"]["world_size"] == 1
    assert len(meta["rng"]["torch_cpu"]) == 1 and isinstance(meta["rng"]["python"][1], list)
    with safe_open(str(meta_path.with_suffix(".safetensors")), "pt") as fh:
        keys = set(fh.keys())
    assert any(k.startswith("model.") for k in keys) and any(k.endswith(".exp_avg_sq") for k in keys)


# --------------------------------------------------------------------------- misc errors
def test_bad_run_settings(data, tmp_path):
    with pytest.raises(ConfigError, match="larger than the 64 training images"):
        fit(ClassificationTask(vit().model), data, cfg(batch_size=128), out_dir=tmp_path, phase="p")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            fit(ClassificationTask(vit().model), data, cfg(max_steps=1, tensorboard=True), out_dir=tmp_path, phase="t")


# --------------------------------------------------------------------------- evaluation
def test_evaluate_matches_brute_force(data):
    d = build_data(DataConfig(img_size=8, augment=False))  # digits: 10 classes, top-5 reported
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    res = evaluate(model, d.eval_loader("test", batch_size=50))
    top1 = top5 = 0
    loss = 0.0
    for i in range(len(d.test)):
        x, y = d.test[i]
        logits = model(x[None])[0].detach()
        order = sorted(range(10), key=lambda c: -float(logits[c]))
        top1 += order[0] == y
        top5 += y in order[:5]
        loss += float(-torch.log_softmax(logits, -1)[y])
    n = len(d.test)
    assert res["images"] == n
    assert res["top1"] == pytest.approx(100 * top1 / n) and res["top5"] == pytest.approx(100 * top5 / n)
    assert res["loss"] == pytest.approx(loss / n, rel=1e-5)
    four = evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), data.test_loader())  # 4 classes
    assert "top5" not in four  # with <= 5 classes top-5 is meaningless


def test_evaluate_pool_and_table(data):
    pool = tiny_pool()
    res = evaluate_pool(pool, data.test_loader(), store=True)
    assert list(res) == [p.name for p in pool.paths]
    for i, p in enumerate(pool.paths):
        r, d = res[p.name], pool.descendant(p)
        assert r["index"] == i and r["params"] == count_params(d) and r["macs"] == count_macs(d)
        assert r["top1"] == pytest.approx(evaluate(d, data.test_loader())["top1"])
    assert pool.evaluation == res
    md = format_table(res)
    lines = md.splitlines()
    assert lines[0].startswith("| descendant | params (M) | MACs (M) | top-1 (%)") and len(lines) == 2 + len(pool.paths)
    first = min(res.values(), key=lambda r: r["macs"])
    assert f"{first['params'] / 1e6:.3f}" in lines[2]
    plain = format_table(res, fmt="plain").splitlines()
    assert len({len(x) for x in plain}) == 1  # aligned columns
    with pytest.raises(ValueError, match="markdown"):
        format_table(res, fmt="html")


# --------------------------------------------------------------------------- train_model
def test_train_model_roundtrip(tmp_path):
    config = {"data": {"source": "synthetic", "img_size": 8, "synthetic_samples": 60, "synthetic_classes": 3},
              "model": {"depth": 2, "embed_dim": 16, "num_heads": 2, "patch_size": 4},
              "train": {"max_steps": 2, "batch_size": 16, "device": "cpu", "progress": False}}
    path = train_model(config, tmp_path, name="anchor")
    assert path == tmp_path / "anchor.safetensors"
    model = load_model(path, REG)
    assert model.shape.depth == 2 and model.shape.width == 16 and model.num_classes == 3
    info = model_info(path)
    assert info["data"]["num_classes"] == 3 and info["steps"] == 2 and "top1" in info["evaluation"]["test"]
    ckpt = sorted((tmp_path / "anchor" / "checkpoints").glob("*.safetensors"))[-1]
    from safetensors.torch import load_file

    trained = {k[6:]: v for k, v in load_file(str(ckpt)).items() if k.startswith("model.")}
    assert all(torch.equal(trained[k], v) for k, v in model.model.state_dict().items())
    assert json.loads((tmp_path / "resolved.json").read_text())["model"]["depth"] == 2
    other = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(PoolFormatError, match="not a stitchkit model file"):
        load_model(other, REG)


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    import sys

    from stitchkit.engine.runlog import RunLog

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    quiet = RunLog(tmp_path, phase="p", total_steps=4, initial_step=0, active=True)
    assert quiet._bar is not None and quiet._bar.disable
    quiet.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    shown = RunLog(tmp_path, phase="p", total_steps=4, initial_step=0, active=True)
    assert not shown._bar.disable
    shown.record({"step": 1, "loss": 0.5})
    shown.close()
    other_rank = RunLog(tmp_path / "r1", phase="p", total_steps=4, initial_step=0, active=False)
    other_rank.record({"step": 1})
    assert not (tmp_path / "r1").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"phase": "p", "step": 1, "loss": 0.5}


def test_weight_decay_follows_the_familys_no_weight_decay() -> None:
    """The engine names no family's parameters: timm's no_weight_decay() decides, in any wrapping module."""
    import timm

    from stitchkit.engine.trainer import no_decay_names, param_groups

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, window_size=7, num_classes=3, depths=(1, 1, 1, 1))
    wrapped = torch.nn.ModuleDict({"student": vit, "swin": swin})
    names = no_decay_names(wrapped)
    assert {"student.pos_embed", "student.cls_token"} <= names
    tables = {f"swin.{n}" for n, _ in swin.named_parameters() if "relative_position_bias_table" in n}
    assert tables and tables <= names
    decay, no_decay = param_groups(wrapped, 0.05)
    by_id = {id(p): n for n, p in wrapped.named_parameters()}
    params = dict(wrapped.named_parameters())  # no_weight_decay() may name tensors a model lacks (timm: dist_token)
    assert {by_id[id(p)] for p in no_decay["params"]} == (names & set(params)) | {n for n, p in params.items() if p.ndim <= 1}
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


# --------------------------------------------------------------------------- train.compile
def _finetune(data, tmp_path, callbacks=(), **kw):
    pool = tiny_pool()
    task = PoolTask(pool, REG.create("sampler", "uniform", pool.paths))
    fit(task, data, cfg(max_steps=8, seed=5, **kw), out_dir=tmp_path, phase="p", callbacks=callbacks)
    return {n: p.detach().clone() for n, p in pool.named_parameters()}


def test_compile_makes_one_graph_per_path_and_trains_the_same_pool(data, tmp_path, monkeypatch):
    """Dynamo traces each sampled path once and reuses its graph; the run trains what eager does.

    A counting backend stands in for inductor (whose C++ build takes minutes of CPU on this
    machine; `benchmarks/compile_speed.py` runs the real one)."""
    from stitchkit.engine import trainer

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(trainer, "COMPILE_OPTIONS", {"backend": counting})
    eager = _finetune(data, tmp_path / "eager")
    seen, per_step = [], []

    class PerStep(Callback):
        def step_end(self, st):
            per_step.append((tuple(st.paths), len(graphs)))

    compiled = _finetune(data, tmp_path / "compiled", callbacks=[PerStep()], compile=True)
    for n in eager:
        torch.testing.assert_close(compiled[n], eager[n], atol=1e-6, rtol=1e-5)
    before = 0
    for paths, count in per_step:
        if paths in seen:
            assert count == before, f"a graph was compiled again for the already seen path {paths}: {per_step}"
        else:
            assert count > before, f"no graph compiled for the new path {paths}"
            seen.append(paths)
        before = count
    assert len(seen) >= 2  # several paths, each with its own graph(s)


def test_compile_falls_back_to_eager_with_a_warning(data, tmp_path, monkeypatch):
    def broken(module, *a, **kw):
        def fail(*args, **kwargs):
            raise RuntimeError("no working C++ compiler\nsecond line")
        return fail

    eager = _finetune(data, tmp_path / "eager")
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match=r"train.compile: torch.compile failed \(RuntimeError: no working C\+\+ compiler\)"):
        fallback = _finetune(data, tmp_path / "fallback", compile=True)
    for n in eager:
        assert torch.equal(fallback[n], eager[n]), n  # eager from the first step on: bit-identical
