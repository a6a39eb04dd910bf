"""Students trained together (one teacher forward per batch), the EMA, lr scaling, bf16 and channels_last."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import DistillationLoss, TapRequest
from stitchkit.core.registry import Registry
from stitchkit.engine import (
    Callback,
    ClassificationTask,
    DataConfig,
    DistillationTask,
    PoolTask,
    Student,
    TrainConfig,
    build_data,
    fit,
    fit_together,
)
from stitchkit.engine.trainer import learning_rate, wants_channels_last
from stitchkit.families.convnext import TimmConvNeXt
from stitchkit.families.levit import TimmLeViT
from stitchkit.families.resnet import TimmResNet
from stitchkit.families.swin import TimmSwin
from stitchkit.families.vit import TimmViT
from stitchkit.pool.pool import Pool

from helpers import engine_data, engine_vit

REG = Registry(load_entrypoints=False)


vit = engine_vit


@pytest.fixture(scope="module")
def data():
    return engine_data()


def cfg(**kw):
    base = dict(epochs=1, batch_size=16, lr=1e-3, device="cpu", log_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


class BlockMSE(DistillationLoss):
    """MSE(teacher block ``t`` @ W, student's last block) with a learnable W."""

    name = "test-block-mse"

    def __init__(self, teacher_width, student_width, t, student_last=1):
        super().__init__()
        self.W = nn.Parameter(torch.randn(teacher_width, student_width) * 0.1)
        self.t, self.s = t, student_last

    def teacher_taps(self):
        return TapRequest(blocks=(self.t,))

    def student_taps(self):
        return TapRequest(blocks=(self.s,))

    def forward(self, student, teacher):
        return F.mse_loss(teacher.blocks[self.t] @ self.W, student.blocks[self.s])


def _students(teacher):
    """Two rows with drop path (their own randomness), each asking the teacher for a different block."""
    rows = [vit(16, 2, drop_path=0.2, seed=2), vit(24, 2, drop_path=0.2, seed=3)]
    torch.manual_seed(4)
    losses = [BlockMSE(32, 16, t=1), BlockMSE(32, 24, t=2)]
    return [DistillationTask(r, teacher, loss, alpha=0.3) for r, loss in zip(rows, losses)]


def _weights(task):
    return {k: v.detach().clone() for k, v in task.trainable().state_dict().items()}


class Raise(Callback):
    """Stops the run after ``at`` steps, as a kill would (checkpoints written before stay)."""

    def __init__(self, at):
        self.at = at

    def step_end(self, st):
        if st.step == self.at:
            raise KeyboardInterrupt


# --------------------------------------------------------------------------- one teacher forward for several students
def test_students_together_equal_each_trained_alone_bit_for_bit(data, tmp_path):
    teacher = vit(32, 3, seed=1)
    calls = []
    teacher.model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    train = cfg(epochs=2, warmup_epochs=0.5, checkpoint_every=3, eval_every=1)

    alone = _students(teacher)
    for i, task in enumerate(alone):
        fit(task, data, train, out_dir=tmp_path / "alone", phase=f"row{i}")
    alone_calls, calls[:] = len(calls), []
    together = _students(teacher)
    results = fit_together([Student(t, train, f"row{i}") for i, t in enumerate(together)], data, out_dir=tmp_path / "together")

    steps = 2 * 4  # 64 training images, batch 16, 2 epochs
    assert [r.steps for r in results] == [steps, steps]
    assert alone_calls == 2 * steps and len(calls) == steps  # one teacher forward per batch for both students
    for a, b in zip(alone, together):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]
    for i in range(2):  # the same log and validation, in each student's own folder
        la = (tmp_path / "alone" / f"row{i}" / "metrics.jsonl").read_text().splitlines()
        lb = (tmp_path / "together" / f"row{i}" / "metrics.jsonl").read_text().splitlines()
        strip = [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in la]
        assert strip == [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lb]
    records = [json.loads(x) for x in (tmp_path / "together" / "runs.jsonl").read_text().splitlines()]
    assert [r.get("together_with") for r in records] == [["row1"], ["row0"]]


def test_students_together_resume_after_a_kill_and_skip_finished_ones(data, tmp_path):
    teacher = vit(32, 3, seed=1)
    train = cfg(epochs=2, checkpoint_every=3, mixup=0.8, cutmix=1.0)  # the mixing stream resumes too
    alone = _students(teacher)
    for i, task in enumerate(alone):
        fit(task, data, train, out_dir=tmp_path / "alone", phase=f"row{i}")

    killed = _students(teacher)
    with pytest.raises(KeyboardInterrupt):
        fit_together([Student(t, train, f"row{i}", callbacks=[Raise(5)] if i else ()) for i, t in enumerate(killed)],
                     data, out_dir=tmp_path / "killed")
    resumed = _students(teacher)
    res = fit_together([Student(t, train, f"row{i}") for i, t in enumerate(resumed)], data, out_dir=tmp_path / "killed")
    assert [r.steps for r in res] == [8, 8] and not any(r.skipped for r in res)
    for a, b in zip(alone, resumed):
        wa, wb = _weights(a), _weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # row0 already finished (trained alone): it is skipped, row1 trains on, still equal to alone
    (tmp_path / "mixed").mkdir()
    first = _students(teacher)
    fit(first[0], data, train, out_dir=tmp_path / "mixed", phase="row0")
    again = _students(teacher)
    res = fit_together([Student(t, train, f"row{i}") for i, t in enumerate(again)], data, out_dir=tmp_path / "mixed")
    assert res[0].skipped and not res[1].skipped
    wa, wb = _weights(alone[1]), _weights(again[1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pools_fine_tuned_together_equal_alone(data, tmp_path):
    """Two pools from the same rows, distilled from the same teacher's logits, fine-tuned with their own samplers."""
    teacher = vit(32, 3, seed=1)
    train = cfg(max_steps=5, label_smoothing=0.1)

    def pools():
        out = []
        for seed in (0, 10):
            pool = Pool.from_method(REG.method("sequential"), [vit(16, 3, drop_path=0.1, seed=seed), vit(32, 3, drop_path=0.1, seed=seed + 1)])
            out.append(PoolTask(pool, REG.create("sampler", "uniform", pool.paths), teacher=teacher, distillation="soft"))
        return out

    alone = pools()
    for i, t in enumerate(alone):
        fit(t, data, train, out_dir=tmp_path / "a", phase=f"finetune-{i}")
    together = pools()
    fit_together([Student(t, train, f"finetune-{i}") for i, t in enumerate(together)], data, out_dir=tmp_path / "b")
    for a, b in zip(alone, together):
        wa, wb = _weights(a), _weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_students_together_must_see_the_same_batches(data, tmp_path):
    teacher = vit(32, 3, seed=1)
    tasks = _students(teacher)
    with pytest.raises(ConfigError, match=r"row0 and row1 together: train.batch_size differs \(16 vs 32\)"):
        fit_together([Student(tasks[0], cfg(), "row0"), Student(tasks[1], cfg(batch_size=32), "row1")], data, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="same phase name"):
        fit_together([Student(tasks[0], cfg(), "row"), Student(tasks[1], cfg(), "row")], data, out_dir=tmp_path)
    other = DistillationTask(vit(16, 2), vit(32, 3, seed=5), BlockMSE(32, 16, t=1))
    with pytest.raises(ConfigError, match="2 different teachers"):
        fit_together([Student(tasks[0], cfg(), "row0"), Student(other, cfg(), "row1")], data, out_dir=tmp_path)
    assert not (tmp_path / "row0").exists()  # refused before any training


# --------------------------------------------------------------------------- EMA and lr scaling
class Snapshots(Callback):
    def __init__(self, model):
        self.model, self.weights = model, []

    def step_end(self, st):
        self.weights.append({k: v.detach().to(torch.float64).clone() for k, v in self.model.state_dict().items()})


def test_ema_is_the_hand_computed_average_and_is_evaluated_saved_and_resumed(data, tmp_path):
    student = vit(seed=7)
    start = {k: v.detach().to(torch.float64).clone() for k, v in student.model.state_dict().items()}
    snaps = Snapshots(student.model)
    decay = 0.6
    train = cfg(epochs=2, model_ema=True, model_ema_decay=decay, checkpoint_every=3)
    res = fit(ClassificationTask(student.model), data, train, out_dir=tmp_path / "a", phase="p", callbacks=[snaps])
    # e_0 = w_0; e_k = decay * e_(k-1) + (1 - decay) * w_k after every optimizer step k
    expected = dict(start)
    for w in snaps.weights:
        expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in expected}
    assert len(snaps.weights) == 8 and res.ema is not None
    got = res.ema.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].to(torch.float64), v, atol=1e-6, rtol=0)
    assert not torch.equal(got["head.weight"], student.model.state_dict()["head.weight"])  # an average, not the weights
    saved = load_file(str(tmp_path / "a" / "p" / "ema.safetensors"))
    assert saved.keys() == got.keys() and all(torch.equal(saved[k], got[k]) for k in saved)
    recs = [json.loads(x) for x in (tmp_path / "a" / "p" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_ema_top1" in r and "val_top1" in r for r in recs)

    # killed after step 5 (checkpoint at step 3), resumed: the same average as the uninterrupted run
    again = vit(seed=7)
    with pytest.raises(KeyboardInterrupt):
        fit(ClassificationTask(again.model), data, train, out_dir=tmp_path / "b", phase="p", callbacks=[Raise(5)])
    again = vit(seed=7)
    res_b = fit(ClassificationTask(again.model), data, train, out_dir=tmp_path / "b", phase="p")
    assert res_b.ema is not None and all(torch.equal(res_b.ema.state_dict()[k], got[k]) for k in got)


def test_lr_scaled_by_the_global_batch_as_deit(data, tmp_path):
    train = cfg(max_steps=2, lr=4e-3, min_lr=0.0, lr_reference_batch=512)
    assert train.peak_lr == 4e-3 * 16 / 512  # DeiT: lr * batch / 512
    assert cfg(lr=4e-3).peak_lr == 4e-3
    fit(ClassificationTask(vit().model), data, train, out_dir=tmp_path, phase="p")
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    # cosine from the scaled peak over 2 steps: peak at step 0, then (peak + 0) / 2 at step 1
    assert lrs == pytest.approx([1.25e-4, 0.625e-4], rel=1e-12)
    assert lrs == [learning_rate(s, 2, 0, train.peak_lr, 0.0) for s in range(2)]
    with pytest.raises(ConfigError, match="train.lr_reference_batch must be >= 0"):
        TrainConfig(lr_reference_batch=-1).validate()
    with pytest.raises(ConfigError, match=r"train.model_ema_decay must be in \[0, 1\)"):
        TrainConfig(model_ema_decay=1.0).validate()


def test_new_options_at_their_defaults_leave_the_checkpoint_identity_unchanged():
    from stitchkit.engine.trainer import run_identity

    plain = run_identity({"x": 1}, "p", TrainConfig())
    assert "model_ema" not in plain["train"] and "memory_format" not in plain["train"]
    assert run_identity({"x": 1}, "p", TrainConfig(model_ema=True))["train"]["model_ema"] is True


# --------------------------------------------------------------------------- bf16 and channels_last, every family
FAMILIES = [TimmViT, TimmSwin, TimmResNet, TimmConvNeXt, TimmLeViT]


def example(family):
    """The family's small example; the ResNet's at 32 px: at 16 px its last stage runs on 1x1 maps, where torch
    2.14's CPU bf16 channels_last convolution backward gave NaN weight gradients (docs/training.md)."""
    if family is TimmResNet:
        return TimmResNet.from_arch({**TimmResNet.example().arch(), "img_size": [32, 32]})
    return family.example()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda c: c.__name__)
def test_bf16_and_channels_last_train_every_family_with_float32_weights(family, tmp_path):
    c, h, _ = example(family).input_size
    data = build_data(DataConfig(source="synthetic", img_size=h, in_chans=c, synthetic_samples=40,
                                 synthetic_classes=example(family).num_classes, val_fraction=0.0, test_fraction=0.0))
    convolutional = family in (TimmResNet, TimmConvNeXt, TimmLeViT)  # LeViT: its stem's overlapping 3x3 convolutions
    assert wants_channels_last(example(family).model) is convolutional

    def run(**kw):
        torch.manual_seed(0)
        adapter = example(family)
        before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
        out = tmp_path / str(kw)
        res = fit(ClassificationTask(adapter.model), data, cfg(max_steps=2, batch_size=8, **kw), out_dir=out, phase="p")
        first = json.loads((out / "p" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        return adapter, before, res, first

    fp32, _, _, fp32_loss = run(precision="fp32", memory_format="contiguous")
    bf16, before, res, bf16_loss = run(precision="bf16", memory_format="channels_last")
    state = bf16.model.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in state.items())  # master weights stay float32
    assert any(v.dtype == torch.float32 for v in state.values())
    assert math_finite(res.last_metrics["loss"])
    # the first step's loss, same weights and batch: bf16 keeps 8 significant bits, so within a few percent
    assert bf16_loss != fp32_loss and abs(bf16_loss - fp32_loss) < 0.03 * fp32_loss
    params = dict(bf16.model.named_parameters())
    ref = dict(fp32.model.named_parameters())
    changed = [k for k in params if not torch.equal(params[k].detach(), before[k])]
    assert changed
    # two AdamW steps at lr 1e-3 move a weight by at most about 1e-3 each (|m/sqrt(v)| <= ~1 in the first
    # steps), so the two runs' weights differ by at most about 4e-3, whatever the precision did to the gradients
    drift = max(float((params[k] - ref[k]).detach().abs().max()) for k in changed)
    assert 0 < drift < 4.1e-3
    if convolutional:  # the conv weights were trained in channels_last
        convs = [m for m in bf16.model.modules() if isinstance(m, nn.Conv2d)]
        assert any(m.weight.is_contiguous(memory_format=torch.channels_last) and m.weight.shape[-1] > 1 for m in convs)


def math_finite(x):
    import math

    return math.isfinite(x)


# --------------------------------------------------------------------------- no host read inside a step
def test_a_step_reads_nothing_back_to_the_host(data, tmp_path, monkeypatch):
    """Inside the engine's step, no stitchkit code (the loop, the tasks, the Learngene loss) turns a tensor into
    a Python number: on a GPU that would wait for the device. The loss is read in the log window only."""
    import sys

    from stitchkit.engine import trainer
    from stitchkit_learngene.distill import AuxiliaryDistillationTask

    inside, reads = [False], []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name):
            caller = sys._getframe(1).f_code
            # path samplers draw from the CPU generator the engine hands them, never from a device tensor
            if inside[0] and "stitchkit" in caller.co_filename and not caller.co_filename.endswith("samplers.py"):
                reads.append(f"{_name} in {caller.co_name} ({caller.co_filename.rsplit('/', 2)[-2:]})")
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    real_step = trainer._step

    def step(*args, **kwargs):
        inside[0] = True
        try:
            return real_step(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(trainer, "_step", step)
    teacher = vit(32, 3, seed=1)
    loss = Registry().build("loss", "learngene", teacher.shape, vit(16, 2).shape, options={})
    pool = Pool.from_method(REG.method("sequential"), [vit(16, 3, seed=0), vit(32, 3, seed=1)])
    students = [
        Student(AuxiliaryDistillationTask(vit(16, 2, drop_path=0.1), teacher, loss), cfg(max_steps=3, log_every=100, eval_every=0), "row"),
        Student(PoolTask(pool, REG.create("sampler", "sandwich", pool.paths, [c["macs"] for c in pool.costs()]),
                         teacher=teacher, distillation="soft"), cfg(max_steps=3, log_every=100, eval_every=0), "pool"),
    ]
    results = fit_together(students, data, out_dir=tmp_path)
    assert [r.steps for r in results] == [3, 3]
    assert reads == [], reads
    # ... while the log window did read the loss (one record per student, at the last step)
    assert all(len((tmp_path / p / "metrics.jsonl").read_text().splitlines()) == 1 for p in ("row", "pool"))
