"""``stitchkit cost``: training compute of a build config, checked against a hand computation.

The tiny configs below are priced twice: by stitchkit (planner MACs, the
methods' phase descriptions) and here, from the ViT MAC formulas in
``helpers.py``, the engine's batch arithmetic and the stated convention
(FLOPs = 2 x MACs, trained 3 forwards, frozen 1).
"""

from __future__ import annotations

import json
import pathlib

import pytest
from helpers import block_macs, stem_macs

from stitchkit.cli.main import main
from stitchkit.apps.cost import Phase, TrainingPlan, summarize, training_cost
from stitchkit.engine.settings import load_config
from stitchkit.core.errors import ConfigError

IMG, PATCH, CHANS, CLASSES = 16, 4, 3, 2
TOKENS = (IMG // PATCH) ** 2 + 1


def vit_macs(depth: int, d: int) -> int:
    return stem_macs(d, IMG, PATCH, CHANS) + depth * block_macs(d, TOKENS) + d * CLASSES


def seq_path_macs(k: int, depth: int, narrow: int, wide: int) -> int:
    """``k`` narrow blocks, then ``depth - k`` wide ones (stitch on every token between them)."""
    stem = stem_macs(narrow if k else wide, IMG, PATCH, CHANS)
    head = (narrow if k == depth else wide) * CLASSES
    stitch = TOKENS * narrow * wide if 0 < k < depth else 0
    return stem + k * block_macs(narrow, TOKENS) + (depth - k) * block_macs(wide, TOKENS) + stitch + head


def images(epochs: int, n: int, batch: int) -> int:
    return epochs * (n // batch) * batch


def flops(trained: float, frozen: float, seen: int) -> float:
    return 2 * (3 * trained + frozen) * seen


@pytest.fixture
def image_folder(tmp_path: pathlib.Path) -> pathlib.Path:
    """train/: 2 classes x 5 images, val/: 2 x 2 (empty files: only counted, never decoded)."""
    from PIL import Image

    for split, n in (("train", 5), ("val", 2)):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (IMG, IMG)).save(folder / f"{i}.png")
    return tmp_path / "data"


LEARNGENE = """
method = "learngene-pool"
[data]
source = "imagefolder"
root = "{root}"
img_size = 16
in_chans = 3
[model]
depth = 6
embed_dim = 16
num_heads = 2
patch_size = 4
[train]
batch_size = 4
epochs = 2
[learngene]
rows = "3x8:1,3x16:2"
levels = "dense"
initializer = "ls"
init_images = 6
[learngene.ancestry_train]
epochs = 5
[learngene.distill]
epochs = 3
[learngene.finetune]
epochs = 7
"""


def write(tmp_path: pathlib.Path, text: str, **fmt: str) -> pathlib.Path:
    path = tmp_path / "config.toml"
    path.write_text(text.format(**fmt))
    return path


def test_learngene_cost_equals_hand_count(tmp_path: pathlib.Path, image_folder: pathlib.Path) -> None:
    config = load_config(write(tmp_path, LEARNGENE, root=str(image_folder)))
    result = training_cost(config, alone=True)
    n, batch = 10, 4  # files in train/; 2 images of val/ per class are the evaluation set
    assert (result["train_images"], result["eval_images"], result["num_classes"]) == (10, 4, 2)
    anc = vit_macs(6, 16)
    narrow, wide = vit_macs(3, 8), vit_macs(3, 16)
    # dense distillation of the 8-wide row: 3 levels x (W and M), each 16 x 8, applied to every teacher token
    loss_macs = 3 * 2 * 16 * 8 * TOKENS
    paths = [seq_path_macs(k, 3, 8, 16) for k in range(4)]
    expected = {
        "ancestry": (anc, 0, images(5, n, batch)),
        "distill-row0": (narrow + loss_macs, anc, images(3, n, batch)),
        # same width: W = M = identity, nothing learned; distilled together with row 0, so the ancestry's
        # forward on each batch is counted once, on row 0's phase
        "distill-row1": (wide, 0, images(3, n, batch)),
        "stitch-init-ls": (0, narrow + wide, 6),
        "finetune-ls": (sum(paths) / 4, anc, images(7, n, batch)),
        "evaluate": (0, sum(paths), 4),
    }
    got = {p["name"]: p for p in result["phases"]}
    assert list(got) == list(expected)
    for name, (trained, frozen, seen) in expected.items():
        p = got[name]
        assert (p["trained_macs"], p["frozen_macs"], p["images_seen"]) == (trained, frozen, seen), name
        assert p["flops"] == flops(trained, frozen, seen), name
    build = sum(flops(*expected[k]) for k in expected if k != "evaluate")
    assert result["build_flops"] == build
    assert result["pretraining_flops"] == 0
    assert result["total_flops"] == build
    assert result["evaluation_flops"] == flops(*expected["evaluate"])
    # alone: every descendant distilled from the same ancestry for [learngene.distill]'s 3 epochs; ancestry shared
    alone = result["alone"]
    assert sorted(d["trained_macs"] for d in alone["descendants"]) == sorted(paths)
    assert alone["descendants_flops"] == sum(flops(m, anc, images(3, n, batch)) for m in paths)
    assert alone["shared_flops"] == flops(*expected["ancestry"])
    assert alone["total_flops"] == alone["shared_flops"] + alone["descendants_flops"]
    assert alone["ratio_to_pool"] == alone["total_flops"] / build
    # one row at a time (learngene.together = false): the ancestry's forward paid for each row
    apart = {p["name"]: p for p in training_cost({**config, "learngene": {**config["learngene"], "together": False}})["phases"]}
    assert apart["distill-row1"]["frozen_macs"] == anc
    assert apart["distill-row1"]["flops"] == flops(wide, anc, images(3, n, batch))


SNNET = """
method = "snnet"
[data]
source = "imagefolder"
root = "{root}"
img_size = 16
in_chans = 3
[train]
batch_size = 3
epochs = 4
max_steps = 5
[snnet]
init_images = 7
distillation = "hard"
[snnet.anchor_training]
epochs = 2
[[snnet.anchors]]
shape = "2x8:1"
train = true
patch_size = 4
[[snnet.anchors]]
shape = "2x16:2"
train = true
patch_size = 4
"""


def test_snnet_cost_equals_hand_count(tmp_path: pathlib.Path, image_folder: pathlib.Path) -> None:
    from stitchkit.core.registry import default_registry
    from stitchkit.core.spec import RowShape

    config = load_config(write(tmp_path, SNNET, root=str(image_folder)))
    result = training_cost(config, alone=True, gpu_tflops=2.0, mfu=0.5)
    small, large = vit_macs(2, 8), vit_macs(2, 16)
    method = default_registry().method("snnet")
    rows = [RowShape(2, 8, 1), RowShape(2, 16, 2)]
    widths = [8, 16]

    def macs(path) -> int:  # noqa: ANN001
        first, last = path.segments[0].row, path.segments[-1].row
        total = stem_macs(widths[first], IMG, PATCH, CHANS) + widths[last] * CLASSES
        total += sum(len(s) * block_macs(widths[s.row], TOKENS) for s in path.segments)
        return total + TOKENS * 8 * 16 * len(path.stitches)

    paths = [macs(p) for p in method.paths(rows, method.stitches(rows))]
    expected = {
        # [snnet.anchor_training] inherits [train]'s max_steps = 5: 2 epochs of 3 steps capped at 5
        "anchor0": (small, 0, 5 * 3),
        "anchor1": (large, 0, 5 * 3),
        "stitch-init": (0, small + large, 7),
        # 4 epochs of 3 steps, capped at max_steps = 5; the largest anchor is the frozen teacher
        "finetune": (sum(paths) / len(paths), large, 5 * 3),
        "evaluate": (0, sum(paths), 4),
    }
    got = {p["name"]: p for p in result["phases"]}
    assert list(got) == list(expected)
    for name, (trained, frozen, seen) in expected.items():
        p = got[name]
        assert (p["trained_macs"], p["frozen_macs"], p["images_seen"]) == (trained, frozen, seen), name
        assert p["gpu_hours"] == pytest.approx(flops(trained, frozen, seen) / (2.0e12 * 0.5) / 3600, rel=1e-12)
    assert result["build_gpu_hours"] == pytest.approx(result["build_flops"] / 1e12 / 3600, rel=1e-12)
    # alone: every configuration trained from scratch with the anchors' recipe, no teacher
    alone = result["alone"]
    assert [d["trained_macs"] for d in alone["descendants"]] == paths
    assert alone["total_flops"] == sum(flops(m, 0, 5 * 3) for m in paths)


def test_uniform_is_exact_and_other_samplers_are_drawn() -> None:
    from stitchkit.apps.cost import expected_step_macs
    from stitchkit.core.registry import default_registry
    from stitchkit.core.spec import Path, Segment

    paths = [Path((Segment(0, 0, i + 1),)) for i in range(4)]
    macs = [10, 20, 30, 100]
    reg = default_registry()
    assert expected_step_macs(reg.create("sampler", "uniform", paths, macs), macs) == (40.0, True)
    # sandwich: smallest + largest + one uniform draw each step -> 110 + 40 in expectation
    value, exact = expected_step_macs(reg.create("sampler", "sandwich", paths, macs), macs, draws=20000)
    assert not exact and value == pytest.approx(150.0, rel=0.02)


def test_pretrained_weights_are_priced_as_pretraining() -> None:
    plan = TrainingPlan(
        phases=[
            Phase("ancestry (loaded)", "", 300, 10, trained_macs=5.0, kind="pretraining"),
            Phase("distill", "", 2, 10, trained_macs=1.0, frozen_macs=5.0),
        ],
        alone=[Phase("alone a", "", 2, 10, trained_macs=1.0, frozen_macs=5.0)] * 3,
        shared=["ancestry (loaded)"],
    )
    result = summarize(plan, train_images=25, alone=True)
    pre, build = flops(5.0, 0, 300 * 20), flops(1.0, 5.0, 2 * 20)
    assert (result["pretraining_flops"], result["build_flops"], result["total_flops"]) == (pre, build, pre + build)
    assert result["alone"]["total_flops"] == pre + 3 * build


def test_deit_base_configs_price_at_imagenet_scale() -> None:
    """The shipped paper configs price without data or weights (meta device, sizes given)."""
    root = pathlib.Path(__file__).parents[1] / "plugins"
    config = load_config(root / "stitchkit_learngene" / "configs" / "learngene_deit_base_l6.toml")
    result = training_cost(config, train_images=1281167, eval_images=50000, num_classes=1000, alone=True)
    phases = {p["name"]: p for p in result["phases"]}
    # DeiT-B forward at 224 px: 17.56 GMACs (the planner's count, docs/planner.md); 100 epochs of batch 128
    # the two rows distilled together: the ancestry's forward priced once, on row 0's phase
    assert phases["distill-row0"]["frozen_macs"] == phases["ancestry (loaded)"]["trained_macs"]
    assert phases["distill-row1"]["frozen_macs"] == 0
    assert f"{result['build_flops']:.3e}" == "1.599e+19"  # 2.049e+19 with one ancestry forward per row (docs/planner.md)
    assert round(phases["ancestry (loaded)"]["trained_macs"] / 1e9, 2) == 17.56
    assert phases["distill-row0"]["images_seen"] == 100 * (1281167 // 128) * 128
    assert len(result["alone"]["descendants"]) == 7


def test_errors_are_clear(tmp_path: pathlib.Path, image_folder: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(write(tmp_path, LEARNGENE, root=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="--images N --eval-images M --num-classes C"):
        training_cost(config)
    good = write(tmp_path, LEARNGENE, root=str(image_folder))
    assert main(["cost", str(good), "--gpu-tflops", "100"]) == 2
    assert "--gpu-tflops and --mfu together" in capsys.readouterr().err
    assert main(["cost", str(good), "--gpu-tflops", "100", "--mfu", "1.5"]) == 2
    assert "--mfu must be in (0, 1]" in capsys.readouterr().err
    plan_only = tmp_path / "seq.toml"
    plan_only.write_text('method = "sequential"\n[data]\nsource = "imagefolder"\nroot = "%s"\nin_chans = 3\n' % image_folder)
    assert main(["cost", str(plan_only)]) == 2
    assert "does not describe its training phases" in capsys.readouterr().err


def test_cli_json_matches_the_api(tmp_path: pathlib.Path, image_folder: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, LEARNGENE, root=str(image_folder))
    assert main(["cost", str(path), "--json", "--alone", "--set", "learngene.finetune.epochs=9"]) == 0
    printed = json.loads(capsys.readouterr().out)
    api = training_cost(load_config(path, ["learngene.finetune.epochs=9"]), alone=True)
    assert printed == json.loads(json.dumps(api))
    assert {p["name"]: p["epochs"] for p in printed["phases"]}["finetune-ls"] == 9
    assert main(["cost", str(path), "--alone"]) == 0
    text = capsys.readouterr().out
    assert "finetune-ls" in text and "alone total" in text


def test_snnetv2_is_priced_through_snnet_phases() -> None:
    """SN-Netv2 runs SN-Net's pipeline from its own section; its ros sampler is drawn, not exact."""
    from stitchkit.core.registry import default_registry

    root = pathlib.Path(__file__).parents[1] / "plugins"
    config = load_config(root / "stitchkit_snnetv2" / "configs" / "digits.toml")
    result = training_cost(config, train_images=1000, eval_images=100, num_classes=10, alone=True)
    names = [p["name"] for p in result["phases"]]
    assert names[-2:] == ["finetune", "evaluate"] and "stitch-init" in names
    assert any("4096 draws of the 'ros' sampler" in n for n in result["notes"])
    method = default_registry().method("snnetv2")
    finetune = next(p for p in result["phases"] if p["name"] == "finetune")
    evaluate = next(p for p in result["phases"] if p["name"] == "evaluate")
    # the mean MACs of a drawn path lies between the smallest and the largest path's
    per_path = [d["trained_macs"] for d in result["alone"]["descendants"]]
    assert min(per_path) < finetune["trained_macs"] < max(per_path)
    assert evaluate["frozen_macs"] == sum(per_path)
    assert len(per_path) == len({d["name"] for d in result["alone"]["descendants"]}) > len(method.routes)


def test_a_model_file_from_train_is_priced_at_its_recorded_budget(tmp_path: pathlib.Path, image_folder: pathlib.Path) -> None:
    from stitchkit.engine.standalone import train_model

    config = load_config(write(tmp_path, LEARNGENE, root=str(image_folder)))
    model = train_model({k: config[k] for k in ("data", "model", "train")} | {"train": {**config["train"], "progress": False}},
                        tmp_path / "anc")
    config["learngene"]["ancestry"] = str(model)
    result = training_cost(config)
    (loaded,) = [p for p in result["phases"] if p["name"] == "ancestry (loaded)"]
    # [train]: 2 epochs of floor(10 / 4) = 2 steps of batch 4: 16 images, not 300 pretraining epochs
    assert loaded["images_seen"] == 16 and loaded["kind"] == "pretraining"
    assert loaded["flops"] == flops(vit_macs(6, 16), 0, 16)
    assert result["pretraining_flops"] == flops(vit_macs(6, 16), 0, 16)


def test_loaded_networks_are_priced_by_what_their_file_records(tmp_path: pathlib.Path) -> None:
    from stitchkit.apps.cost import loaded_phase, network_macs
    from stitchkit.engine.data import DataSpec
    from stitchkit.engine.model import ModelConfig, build_model, save_model

    net = build_model(DataSpec(CHANS, IMG, CLASSES), ModelConfig(depth=2, embed_dim=16, num_heads=2, patch_size=PATCH))
    anchor = save_model(net, tmp_path / "anchor0.safetensors", {"snnet_anchor": 0, "steps": 5, "batch_size": 4})  # an SN-Net anchor
    plain = save_model(net, tmp_path / "plain.safetensors", {})  # no budget recorded
    macs = network_macs(net)
    assert macs == vit_macs(2, 16)
    recorded = loaded_phase("anchor0 (loaded)", str(anchor), net, 300, 64)
    assert (recorded.images_seen(1000), recorded.kind, recorded.trained_macs) == (20, "pretraining", macs)
    assert loaded_phase("x", str(plain), net, 300, 64).images_seen(1000) == 300 * (1000 // 64) * 64
