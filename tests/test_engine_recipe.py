"""The DeiT recipe in the engine: timm Mixup/CutMix with soft targets, and teachers from timm."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from stitchkit.engine import LogitsTeacher, PoolTask, TrainConfig, TrainTask, fit, load_teacher
from stitchkit.core.errors import CheckpointError, ConfigError
from stitchkit.core.interfaces import TapRequest
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry
from stitchkit.families.vit import TimmViT

from helpers import engine_data, engine_vit

CLASSES = 4


@pytest.fixture(scope="module")
def data():
    return engine_data(CLASSES)


def cfg(**kw):
    base = dict(epochs=1, batch_size=16, lr=1e-3, device="cpu", log_every=1, progress=False, max_steps=3, eval_every=0)
    return TrainConfig(**{**base, **kw})


def vit(width=16, seed=0):
    return engine_vit(width, classes=CLASSES, seed=seed)


class Recorder(TrainTask):
    """Cross-entropy on a linear model, recording every batch it is given."""

    def __init__(self) -> None:
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES))
        self.batches: list = []

    def trainable(self) -> nn.Module:
        return self.model

    def loss(self, model, batch, teacher, path):  # noqa: ANN001
        self.batches.append((batch.images.clone(), batch.targets.clone(), batch.label_smoothing))
        return F.cross_entropy(model(batch.images), batch.targets, label_smoothing=batch.label_smoothing)


def test_mixup_mixes_images_and_softens_targets(data, tmp_path):
    plain, mixed = Recorder(), Recorder()
    fit(plain, data, cfg(label_smoothing=0.1), out_dir=tmp_path / "plain", phase="p")
    fit(mixed, data, cfg(label_smoothing=0.1, mixup=0.8), out_dir=tmp_path / "mixed", phase="p")
    assert len(plain.batches) == len(mixed.batches) == 3
    for (x, y, ls), (xm, ym, lsm) in zip(plain.batches, mixed.batches):
        assert ls == 0.1 and lsm == 0.0  # smoothing moves into the soft targets
        # one lam per batch; image i mixed with image B-1-i; targets mixed the same way, then smoothed
        d = (x - x.flip(0)).flatten()
        lam = float((xm - x.flip(0)).flatten() @ d / (d @ d))
        torch.testing.assert_close(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=0)
        off, on = 0.1 / CLASSES, 1 - 0.1 + 0.1 / CLASSES
        one_hot = F.one_hot(y, CLASSES).float() * (on - off) + off
        torch.testing.assert_close(ym, lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-5, rtol=0)
    # seeded: a second run mixes identically
    again = Recorder()
    fit(again, data, cfg(label_smoothing=0.1, mixup=0.8), out_dir=tmp_path / "again", phase="p")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(mixed.batches, again.batches))


def test_cutmix_and_mixup_options_are_checked(data, tmp_path):
    for bad, match in [(dict(mixup=-0.1), "mixup and train.cutmix must be >= 0"),
                       (dict(mixup_prob=1.5), "mixup_prob must be in"),
                       (dict(mixup_mode="image"), "mixup_mode must be one of batch, pair, elem")]:
        with pytest.raises(ConfigError, match=match):
            cfg(**bad).validate()
    with pytest.raises(ConfigError, match=r"per-process batch \(15\) must be even"):
        fit(Recorder(), data, cfg(cutmix=1.0, batch_size=15), out_dir=tmp_path / "odd", phase="p")
    rec = Recorder()
    fit(rec, data, cfg(cutmix=1.0, label_smoothing=0.0), out_dir=tmp_path / "cut", phase="p")
    for xm, ym, _ in rec.batches:  # cutmix: every target row is a two-class mixture summing to 1
        torch.testing.assert_close(ym.sum(1), torch.ones(len(ym)))


class Spy(nn.Module):
    """A 'CNN' teacher recording its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, CLASSES))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.net(x)


def test_hard_distillation_from_a_logits_teacher_sees_the_mixed_batch(data, tmp_path):
    pool = Pool.from_method(Registry(load_entrypoints=False).method("sequential"), [vit(16), vit(32, 1)])
    sampler = Registry(load_entrypoints=False).create("sampler", "uniform", pool.paths, [1] * len(pool.paths))
    spy = Spy()
    task = PoolTask(pool, sampler, teacher=LogitsTeacher(spy, "spy"), distillation="hard")
    seen_by_student: list[torch.Tensor] = []
    original = task.loss

    def loss(model, batch, teacher, path):  # noqa: ANN001
        seen_by_student.append(batch.images.clone())
        assert torch.equal(teacher.logits, spy.net(batch.images))  # the teacher's logits of this very batch
        return original(model, batch, teacher, path)

    task.loss = loss  # type: ignore[method-assign]
    fit(task, data, cfg(mixup=0.8, cutmix=1.0), out_dir=tmp_path / "hard", phase="finetune")
    assert len(spy.seen) == len(seen_by_student) == 3
    assert all(torch.equal(a, b) for a, b in zip(spy.seen, seen_by_student))
    with pytest.raises(ConfigError, match="gives logits only"):
        LogitsTeacher(spy, "spy").forward_taps(torch.zeros(1, 1, 8, 8), TapRequest(blocks=(0,)))


def test_load_teacher_from_timm_with_a_local_checkpoint(data, tmp_path):
    """A timm CNN (RegNetY, DeiT's teacher family) from local weights; a timm ViT comes back as an adapter."""
    import timm

    spec = data.spec
    torch.manual_seed(0)
    cnn = timm.create_model("regnety_002", pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_chans).eval()
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(tmp_path / "regnety.safetensors"))
    teacher = load_teacher("timm:regnety_002", spec, checkpoint=str(tmp_path / "regnety.safetensors"))
    assert isinstance(teacher, LogitsTeacher) and teacher.num_classes == spec.num_classes
    x = torch.randn(2, spec.in_chans, spec.img_size, spec.img_size)
    with torch.no_grad():
        assert torch.equal(teacher.forward_taps(x).logits, cnn(x))
    vit_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=spec.num_classes,
                                  in_chans=spec.in_chans, img_size=spec.img_size, patch_size=4)
    torch.save({"model": vit_model.state_dict()}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match=r"do not fit timm:vit_tiny_patch16_224 with 4 classes \(pos_embed is \[1, 5, 192\] "
                                              r"in the file but \[1, 1, 192\] in the model\)"):  # patch 16 by name: shapes differ
        load_teacher("timm:vit_tiny_patch16_224", spec, checkpoint=str(tmp_path / "vit.pth"))
    with pytest.raises(CheckpointError, match=r"do not fit timm:regnety_002 with 4 classes \(head.fc.weight is \[7, 368\] in the file but \[4, 368\]"):
        wrong = timm.create_model("regnety_002", pretrained=False, num_classes=7, in_chans=spec.in_chans)
        save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(tmp_path / "wrong.safetensors"))
        load_teacher("timm:regnety_002", spec, checkpoint=str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ConfigError, match="neither 'timm:NAME' nor an existing model file"):
        load_teacher("regnety_002", spec)
    with pytest.raises(ConfigError, match="applies to a timm:NAME teacher"):
        load_teacher(str(tmp_path / "vit.pth"), spec, checkpoint=str(tmp_path / "vit.pth"))
    # a timm ViT teacher is the timm-vit adapter (its block taps stay usable)
    big = dataclasses.replace(spec, img_size=32)
    vit_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=CLASSES, in_chans=spec.in_chans, img_size=32)
    save_file({k: v.contiguous() for k, v in vit_model.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    adapter = load_teacher("timm:vit_tiny_patch16_224", big, checkpoint=str(tmp_path / "vit.safetensors"))
    assert isinstance(adapter, TimmViT) and adapter.shape.depth == 12
