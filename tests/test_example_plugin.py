"""The external example plugin (plugins/stitchkit-procrustes, installed by CI): the Procrustes
math against independent references, the initializer on real rows, discovery through its entry
point, use by name in `stitchkit build` (config file and --set), and isolation from a broken plugin."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import pathlib
import sys
import textwrap

import pytest
import torch

try:
    import stitchkit_procrustes as procrustes
except ImportError as exc:  # a failure, not a skip: the README's test command installs it
    raise ImportError("the example plugin is missing; install it: pip install ./plugins/stitchkit-procrustes") from exc

from helpers import identity_blocks, tie_stems_affinely
from stitchkit.cli.main import main  # noqa: E402
from stitchkit.core.errors import ConfigError  # noqa: E402
from stitchkit.core.interfaces import InitContext  # noqa: E402
from stitchkit.pool.pool import Pool  # noqa: E402
from stitchkit.core.registry import AUTOLOAD_ENV, Registry, reset_default_registry  # noqa: E402
from stitchkit.components.sequential import SequentialMethod  # noqa: E402
from stitchkit.core.spec import Path, Segment, StitchSpec  # noqa: E402
from stitchkit.io.storage import load_pool  # noqa: E402
from stitchkit.families.vit import TimmViT  # noqa: E402
from stitchkit_procrustes import ProcrustesInitializer, solve_procrustes  # noqa: E402

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "plugins" / "stitchkit-procrustes"



def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A ``rows x cols`` matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64))
    return q if rows >= cols else q.T


# --------------------------------------------------------------------------- the math
def test_recovers_an_exact_widening_orthogonal_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, 6, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, 6, dtype=torch.float64) + 1.5
    q, b = orthonormal(9, 6, seed=1), torch.randn(9, generator=g, dtype=torch.float64)
    y = x @ q.T + b  # Y = X Q^T + b, tokens (B, N, C)
    w, bias = solve_procrustes(x, y)
    assert w.dtype == torch.float64 and w.shape == (9, 6) and bias.shape == (9,)
    torch.testing.assert_close(w, q, atol=1e-10, rtol=0)
    torch.testing.assert_close(bias, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(w.T @ w, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_recovers_an_exact_narrowing_map_on_isotropic_features():
    """Orthonormal rows: exact when the centred features are isotropic (Xc^T Xc = s^2 I)."""
    g = torch.Generator().manual_seed(2)
    n, d = 40, 7
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(n, 1, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)], 1))
    x = 3.0 * basis[:, 1:] + torch.randn(d, generator=g, dtype=torch.float64)  # columns orthogonal to the ones vector
    q, b = orthonormal(4, d, seed=3), torch.randn(4, generator=g, dtype=torch.float64)
    w, bias = solve_procrustes(x, x @ q.T + b)
    torch.testing.assert_close(w, q, atol=1e-10, rtol=0)
    torch.testing.assert_close(bias, b, atol=1e-10, rtol=0)


def test_square_case_matches_scipy():
    import scipy.linalg as scipy_linalg  # scikit-learn's dependency, so always installed
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randn(30, 5, generator=g, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    r, _ = scipy_linalg.orthogonal_procrustes(xc.numpy(), yc.numpy())  # argmin ||Xc R - Yc||, R orthogonal
    w, bias = solve_procrustes(x, y)
    torch.testing.assert_close(w, torch.from_numpy(r).T, atol=1e-10, rtol=0)
    torch.testing.assert_close(bias, y.mean(0) - w @ x.mean(0), atol=1e-12, rtol=0)


def test_widening_solution_beats_every_random_orthonormal_map():
    """Brute force: no random W with orthonormal columns fits the centred features better."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(25, 3, generator=g, dtype=torch.float64), torch.randn(25, 5, generator=g, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    w, _ = solve_procrustes(x, y)
    best = torch.linalg.norm(xc @ w.T - yc)
    for seed in range(500):
        other = orthonormal(5, 3, seed=100 + seed)
        assert best <= torch.linalg.norm(xc @ other.T - yc) + 1e-12


def test_token_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="as many front as end tokens"):
        solve_procrustes(torch.zeros(2, 5, 4), torch.zeros(2, 6, 8))
    with pytest.raises(ConfigError, match="max_images must be >= 1"):
        ProcrustesInitializer(max_images=0)


# --------------------------------------------------------------------------- the initializer on real rows
def tiny(width: int, heads: int, depth: int = 3, seed: int = 0) -> TimmViT:
    torch.manual_seed(seed)
    return TimmViT.from_arch(dict(img_size=8, patch_size=4, num_classes=5, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=2.0))



def test_initializer_recovers_an_orthogonal_relation_between_real_rows():
    front, end = tiny(8, 2, seed=1), tiny(12, 3, seed=2)
    identity_blocks(front)
    identity_blocks(end)
    q, c = orthonormal(12, 8, seed=6).float(), torch.randn(12, generator=torch.Generator().manual_seed(7))
    tie_stems_affinely(front, end, q, c)
    pool = Pool.from_method(SequentialMethod(), [front, end])
    images = torch.randn(6, 3, 8, 8)
    ProcrustesInitializer().initialize(pool, InitContext(images=images))
    assert sorted(pool.stitches) == ["s0_1_1", "s0_1_2"]
    for layer in pool.stitches.values():
        torch.testing.assert_close(layer.weight.detach(), q, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.bias.detach(), c, atol=1e-5, rtol=0)
    pool.eval()
    with torch.no_grad():
        want = end.model(images)
        for p in pool.paths:
            if p.rows == (0, 1):
                torch.testing.assert_close(pool.descendant(p)(images), want, atol=1e-4, rtol=1e-4)


class TwoPlaces(SequentialMethod):
    """One stitch layer shared by two cuts: narrow blocks 0..1 then wide 1.., and narrow 0..2 then wide 2.."""

    name = "two-places"

    def stitches(self, rows):
        return [StitchSpec("shared", 0, 1, rows[0].width, rows[1].width)]

    def paths(self, rows, stitches):
        d = rows[0].depth
        return [Path((Segment(0, 0, k), Segment(1, k, d)), ("shared",)) for k in (1, 2)]


def test_shared_layer_gets_the_mean_of_each_places_procrustes_solution():
    narrow, wide = tiny(8, 2, seed=3), tiny(16, 4, seed=4)
    pool = Pool.from_method(TwoPlaces(), [narrow, wide])
    images = torch.randn(5, 3, 8, 8)
    ProcrustesInitializer(max_images=4).initialize(pool, InitContext(images=images))

    def tokens(adapter, k):  # input of block k, run by hand on the first 4 images
        adapter.model.eval()
        with torch.no_grad():
            t = adapter.stem()(images[:4])
            for blk in list(adapter.blocks)[:k]:
                t = blk(t)
        return t.reshape(-1, t.shape[-1]).double()

    ws, bs = [], []
    for k in (1, 2):
        x, y = tokens(narrow, k), tokens(wide, k)
        u, _, vh = torch.linalg.svd((y - y.mean(0)).T @ (x - x.mean(0)), full_matrices=False)
        ws.append(u @ vh)
        bs.append(y.mean(0) - u @ vh @ x.mean(0))
    torch.testing.assert_close(pool.stitches["shared"].weight.detach().double(), (ws[0] + ws[1]) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(pool.stitches["shared"].bias.detach().double(), (bs[0] + bs[1]) / 2, atol=1e-5, rtol=0)


def test_needs_images():
    pool = Pool.from_method(SequentialMethod(), [tiny(8, 2), tiny(16, 4)])
    with pytest.raises(ConfigError, match="'procrustes' stitch initializer needs a batch of training images"):
        ProcrustesInitializer().initialize(pool, InitContext(images=None))


# --------------------------------------------------------------------------- packaging and discovery
def test_found_through_its_entry_point_and_imports_no_other_plugin():
    reg = Registry(load_entrypoints=True)
    assert reg.get("initializer", "procrustes") is ProcrustesInitializer
    assert reg.provider("initializer", "procrustes") == "procrustes"
    (ep,) = [e for e in importlib.metadata.entry_points(group="stitchkit") if e.name == "procrustes"]
    assert ep.value == "stitchkit_procrustes.plugin" and ep.dist.name == "stitchkit-procrustes"
    for source in (PACKAGE / "src" / "stitchkit_procrustes").glob("*.py"):
        tree = ast.parse(source.read_text())
        modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
        assert not [m for m in modules if m.startswith(("stitchkit_snnet", "stitchkit_learngene"))], source


def fake_broken_distribution(root: pathlib.Path) -> None:
    """A distribution with one plugin that fails to import and one that raises while registering."""
    info = root / "sk_fake_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sk-fake-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[stitchkit]\nsk-broken = sk_broken_plugin\nsk-raising = sk_raising_plugin\n")
    (root / "sk_broken_plugin.py").write_text("import a_module_that_does_not_exist\n")
    (root / "sk_raising_plugin.py").write_text(textwrap.dedent("""
        import stitchkit

        @stitchkit.hookimpl
        def register_samplers(register):
            raise RuntimeError("boom while registering")
    """))


# --------------------------------------------------------------------------- use by name in builds
@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    """The CLI's process-wide registry with entry points on, and a broken plugin installed beside them."""
    site = tmp_path / "site"
    site.mkdir()
    fake_broken_distribution(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    reset_default_registry()
    yield
    reset_default_registry()
    for name in ("sk_broken_plugin", "sk_raising_plugin"):
        sys.modules.pop(name, None)


SNNET = """
method = "snnet"
[data]
source = "digits"
img_size = 8
in_chans = 1
[train]
seed = 0
epochs = 1
max_steps = 3
batch_size = 32
lr = 1e-3
progress = false
device = "cpu"
[snnet]
initializer = "procrustes"
init_images = 40
[snnet.finetune]
max_steps = 2
lr = 1e-9
min_lr = 0.0
weight_decay = 0.0
[[snnet.anchors]]
shape = "1x16:2"
patch_size = 4
train = true
[[snnet.anchors]]
shape = "2x32:4"
patch_size = 4
train = true
"""


def test_plugins_command_lists_it_next_to_a_broken_plugin(installed_plugins, capsys):
    assert main(["plugins"]) == 1  # everything is listed, and the broken plugins make the status 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["procrustes", "[procrustes]"] for line in lines), lines
    assert any(line.split()[:2] == ["ls", "[snnet]"] for line in lines) and any(line.split()[:2] == ["uniform", "[stitchkit]"] for line in lines)
    assert any(line.startswith("broken plugin: sk-broken (package sk-fake-broken): ModuleNotFoundError: "
                               "No module named 'a_module_that_does_not_exist'") for line in lines), lines
    assert any(line.startswith("broken plugin: sk-raising (package sk-fake-broken): RuntimeError: boom while registering")
               for line in lines), lines
    assert main(["plugins", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    (entry,) = [c for c in out["components"] if (c["kind"], c["name"]) == ("initializer", "procrustes")]
    assert entry == {
        "kind": "initializer", "name": "procrustes", "plugin": "procrustes",
        "package": "stitchkit-procrustes", "version": importlib.metadata.version("stitchkit-procrustes"),
        "summary": "Orthogonal Procrustes: each stitch layer starts as the best orthogonal map from front to end "
                   "features, plus the mean offset.",
        "class": "stitchkit_procrustes.initializer.ProcrustesInitializer",
        "options": [{"name": "max_images", "type": "int | None", "default": None, "required": False}],
    }
    assert sorted(b["plugin"] for b in out["broken"]) == ["sk-broken", "sk-raising"]
    assert {b["package"] for b in out["broken"]} == {"sk-fake-broken"}


def semi_orthogonal(weight: torch.Tensor) -> None:
    torch.testing.assert_close(weight.T @ weight, torch.eye(weight.shape[1]), atol=1e-5, rtol=0)


def test_snnet_build_selects_it_in_the_config_file(tmp_path, installed_plugins, capsys):
    """One configuration (anchors of depth 1 and 2), so its stitch layer is one place's Procrustes map."""
    from stitchkit.engine import build_data, load_config, load_model
    from stitchkit.engine.data import DataConfig
    from stitchkit_snnet.build import init_images
    from stitchkit_snnet.method import SNNetMethod

    config = tmp_path / "snnet.toml"
    config.write_text(SNNET)
    out = tmp_path / "run"
    assert main(["build", str(config), "--out", str(out)]) == 0
    assert "pool written to" in capsys.readouterr().out
    pool = load_pool(out / "pool.safetensors")
    assert pool.info["snnet"]["initializer"] == "procrustes" and list(pool.stitches) == ["s0_1_0"]
    weight = pool.stitches["s0_1_0"].weight.detach()
    semi_orthogonal(weight)  # ls or random would not give orthonormal columns
    # the same weights from the trained anchors and the build's init images, computed again here
    anchors = [load_model(out / "anchors" / f"anchor{i}.safetensors") for i in (0, 1)]
    again = Pool.from_method(SNNetMethod(), anchors)
    data = build_data(DataConfig.from_config(load_config(config)))
    ProcrustesInitializer().initialize(again, InitContext(images=init_images(data, 40, 0)))
    torch.testing.assert_close(weight, again.stitches["s0_1_0"].weight.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(pool.stitches["s0_1_0"].bias.detach(), again.stitches["s0_1_0"].bias.detach(), atol=1e-6, rtol=0)


def test_learngene_build_selects_it_on_the_command_line(tmp_path, installed_plugins):
    from stitchkit.engine import save_model

    torch.manual_seed(0)
    ancestry = TimmViT.from_arch(dict(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=4, num_heads=2))
    config = tmp_path / "learngene.toml"
    config.write_text(textwrap.dedent(f"""
        method = "learngene-pool"
        [data]
        source = "digits"
        img_size = 8
        in_chans = 1
        [train]
        batch_size = 32
        lr = 1e-3
        progress = false
        eval_every = 0
        [learngene]
        ancestry = "{save_model(ancestry, tmp_path / 'ancestry.safetensors')}"
        rows = "3x16:2,3x32:2"
        initializer = "tm"
        init_images = 50
        [learngene.distill]
        max_steps = 2
        [learngene.finetune]
        max_steps = 1
        lr = 1e-9
        min_lr = 0.0
        weight_decay = 0.0
    """))
    out = tmp_path / "run"
    assert main(["build", str(config), "--out", str(out), "--set", "learngene.initializer=procrustes"]) == 0
    assert json.loads((out / "resolved.json").read_text())["learngene"]["initializer"] == "procrustes"
    assert (out / "finetune-procrustes" / "metrics.jsonl").is_file()
    pool = load_pool(out / "pool.safetensors")
    assert pool.info["learngene"]["initializer"] == "procrustes"
    assert sorted(pool.stitches) == ["s0_1_1", "s0_1_2"]
    for layer in pool.stitches.values():  # sequential paths: one place per layer, an exact Procrustes map
        semi_orthogonal(layer.weight.detach())


def test_a_misspelled_name_is_a_one_line_error(tmp_path, installed_plugins, capsys):
    config = tmp_path / "snnet.toml"
    config.write_text(SNNET)
    assert main(["build", str(config), "--out", str(tmp_path / "run"), "--set", "snnet.initializer=procrustse"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stitchkit: error: unknown initializer 'procrustse'; did you mean 'procrustes'?") and "\n" not in err
