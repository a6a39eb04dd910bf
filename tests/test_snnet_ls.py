"""SN-Net's LS stitch initializer: exact recovery, shared-layer averaging, generic places."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import identity_blocks, tie_stems_affinely
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import InitContext, Taps
from stitchkit.pool.pool import Pool
from stitchkit.components.sequential import SequentialMethod
from stitchkit.families.vit import TimmViT
from stitchkit_snnet.ls import LeastSquaresInitializer, StitchPlace, solve_affine, stitch_places
from stitchkit_snnet.method import SNNetMethod


def tiny(width: int, heads: int, depth: int = 3, seed: int = 0) -> TimmViT:
    torch.manual_seed(seed)
    return TimmViT.from_arch(
        dict(img_size=8, patch_size=4, num_classes=5, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=2.0)
    )


def test_solve_affine_recovers_known_map_exactly():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, 5, generator=g, dtype=torch.float64)  # (B, N, C_in)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    y = x @ w.T + b
    w_hat, b_hat = solve_affine(x.float(), y.float())
    assert w_hat.dtype == torch.float64 and w_hat.shape == (7, 5) and b_hat.shape == (7,)
    torch.testing.assert_close(w_hat, w, atol=1e-4, rtol=1e-4)  # inputs were rounded to float32
    w64, b64 = solve_affine(x, y)
    torch.testing.assert_close(w64, w, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(b64, b, atol=1e-10, rtol=1e-10)


def test_solve_affine_rank_deficient_gives_pinv_solution():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:, :1]], 1)  # a duplicated feature: rank deficient
    y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    w, b = solve_affine(x, y)
    x1 = torch.cat([x, torch.ones(30, 1, dtype=x.dtype)], 1)
    ref = (torch.linalg.pinv(x1) @ y).T  # the official ps_inv
    torch.testing.assert_close(w, ref[:, :-1], atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(b, ref[:, -1], atol=1e-8, rtol=1e-8)


def test_solve_affine_rejects_token_mismatch():
    with pytest.raises(ConfigError, match="as many front as end tokens"):
        solve_affine(torch.zeros(2, 5, 4), torch.zeros(2, 6, 8))


def test_places_of_snnet_pool_by_hand():
    rows = [tiny(8, 2), tiny(16, 4)]
    pool = Pool.from_method(SNNetMethod(), rows)
    places = stitch_places(pool)
    # depth 3: layer 0 has (0,0),(0,1),(1,0),(1,1); layer 1 has (1,2),(2,1),(2,2).
    # place = (front, input of block j+1, end, input of block k)
    assert places["s0_1_0"] == [StitchPlace(0, 1, 1, 0), StitchPlace(0, 1, 1, 1), StitchPlace(0, 2, 1, 0), StitchPlace(0, 2, 1, 1)]
    assert places["s0_1_1"] == [StitchPlace(0, 2, 1, 2), StitchPlace(0, 3, 1, 1), StitchPlace(0, 3, 1, 2)]


class CraftedTaps:
    """Stands in for a row's forward_taps: block inputs are exactly designed tensors."""

    def __init__(self, adapter: TimmViT, inputs: dict[int, torch.Tensor]) -> None:
        self.adapter, self.inputs, self.modes = adapter, inputs, []

    def __call__(self, x, request):
        self.modes.append(self.adapter.model.training)
        depth = len(self.inputs) - 1
        return Taps(logits=torch.zeros(len(x), 5), stem=self.inputs[0], blocks={i: self.inputs[i + 1] for i in range(depth)})


def test_ls_averages_shared_layers_by_hand(monkeypatch):
    rows = [tiny(4, 2), tiny(6, 2)]
    pool = Pool.from_method(SNNetMethod(), rows)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    scale = {p: 1.0 + p for p in range(4)}  # front input of block p is scale[p] * x
    maps = {q: (torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)) for q in range(4)}
    front = CraftedTaps(rows[0], {p: scale[p] * x for p in range(4)})
    end = CraftedTaps(rows[1], {q: x @ maps[q][0].T + maps[q][1] for q in range(4)})
    monkeypatch.setattr(rows[0], "forward_taps", front)
    monkeypatch.setattr(rows[1], "forward_taps", end)
    rows[0].model.train()
    LeastSquaresInitializer().initialize(pool, InitContext(images=torch.zeros(2, 3, 8, 8)))
    # place (p, q): end_q = (front_p / scale[p]) @ A_q.T + c_q  ->  weight A_q / scale[p], bias c_q
    def mean_of(places):
        w = sum(maps[q][0] / scale[p] for p, q in places) / len(places)
        b = sum(maps[q][1] for _, q in places) / len(places)
        return w, b

    for name, places in {"s0_1_0": [(1, 0), (1, 1), (2, 0), (2, 1)], "s0_1_1": [(2, 2), (3, 1), (3, 2)]}.items():
        w, b = mean_of(places)
        torch.testing.assert_close(pool.stitches[name].weight.detach().double(), w, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pool.stitches[name].bias.detach().double(), b, atol=1e-5, rtol=1e-5)
    assert front.modes == [False] and rows[0].model.training  # ran in eval mode, mode restored



def test_ls_on_real_rows_recovers_affine_stem_and_stitched_output_matches():
    torch.manual_seed(0)
    front, end = tiny(8, 2, seed=1), tiny(12, 3, seed=2)
    identity_blocks(front)
    identity_blocks(end)
    a = torch.randn(12, 8)
    c = torch.randn(12)
    tie_stems_affinely(front, end, a, c)
    pool = Pool.from_method(SNNetMethod(), [front, end])
    images = torch.randn(6, 3, 8, 8)
    LeastSquaresInitializer().initialize(pool, InitContext(images=images))
    for layer in pool.stitches.values():
        torch.testing.assert_close(layer.weight.detach(), a, atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(layer.bias.detach(), c, atol=2e-4, rtol=2e-4)
    pool.eval()
    with torch.no_grad():
        want = end.model(images)
        for p in pool.paths[2:]:
            torch.testing.assert_close(pool.descendant(p)(images), want, atol=1e-3, rtol=1e-3)


def test_ls_on_sequential_pool_matches_manual_features():
    """Generic: on a Learngene-style pool, layer k maps narrow block-k output to wide block-k output."""
    narrow, wide = tiny(8, 2, seed=4), tiny(16, 4, seed=5)
    pool = Pool.from_method(SequentialMethod(), [narrow, wide])
    assert stitch_places(pool)["s0_1_2"] == [StitchPlace(0, 2, 1, 2)]
    images = torch.randn(5, 3, 8, 8)
    LeastSquaresInitializer(max_images=4).initialize(pool, InitContext(images=images))

    def manual(adapter, k):
        adapter.model.eval()
        with torch.no_grad():
            t = adapter.stem()(images[:4])
            for blk in list(adapter.blocks)[:k]:
                t = blk(t)
        return t

    for k in (1, 2):
        w, b = solve_affine(manual(narrow, k), manual(wide, k))
        torch.testing.assert_close(pool.stitches[f"s0_1_{k}"].weight.detach(), w.float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pool.stitches[f"s0_1_{k}"].bias.detach(), b.float(), atol=1e-5, rtol=1e-5)


def test_ls_is_deterministic_and_needs_images():
    rows = [tiny(8, 2, seed=6), tiny(16, 4, seed=7)]
    pool = Pool.from_method(SNNetMethod(), rows)
    images = torch.randn(3, 3, 8, 8)
    LeastSquaresInitializer().initialize(pool, InitContext(images=images))
    first = {k: v.clone() for k, v in pool.stitches.state_dict().items()}
    for layer in pool.stitches.values():
        layer.reset_parameters()
    LeastSquaresInitializer().initialize(pool, InitContext(images=images))
    for k, v in pool.stitches.state_dict().items():
        assert torch.equal(v, first[k])
    with pytest.raises(ConfigError, match="needs a batch of training images"):
        LeastSquaresInitializer().initialize(pool, InitContext(images=None))
    with pytest.raises(ConfigError, match="max_images"):
        LeastSquaresInitializer(max_images=0)


# --------------------------------------------------------------------------- mode = "train" (the official fit)
def drop_path_rows(rate: float) -> list[TimmViT]:
    out = []
    for width, heads, seed in ((8, 2, 0), (16, 4, 1)):
        torch.manual_seed(seed)
        out.append(TimmViT.from_arch(dict(img_size=8, patch_size=4, num_classes=5, embed_dim=width, depth=3,
                                          num_heads=heads, mlp_ratio=2.0, drop_path_rate=rate)))
    return out


def stitch_state(pool: Pool) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pool.stitches.state_dict().items()}


def test_mix_images_is_timm_mixup_or_cutmix_of_reversed_pairs():
    from stitchkit_snnet.ls import mix_images, seeded_rngs

    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with seeded_rngs(0):
        mixed = mix_images(x, mixup_alpha=0.8, cutmix_alpha=0.0, switch_prob=0.5)
    # mixup: one lam for the batch, image i mixed with image B-1-i; solve lam from the pixels
    d = (x - x.flip(0)).flatten()
    lam = float((mixed - x.flip(0)).flatten() @ d / (d @ d))
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=0)
    with seeded_rngs(1):
        cut = mix_images(x, mixup_alpha=0.0, cutmix_alpha=1.0, switch_prob=0.5)
    # cutmix: every pixel is either its own or its partner's, in one box shared by the batch
    own, other = cut == x, cut == x.flip(0)
    assert bool((own | other).all())
    box = other.all(dim=(0, 1)) & ~own.all(dim=(0, 1))
    rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
    if len(rows):
        assert bool(box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all())
    assert len(mix_images(x[:5], 0.8, 1.0, 0.5)) == 4  # an odd batch loses its last image
    assert torch.equal(mix_images(x, 0.0, 0.0, 0.5), x)


def test_train_mode_without_noise_equals_eval_mode_on_the_mixed_batch():
    """Rows without drop-path run the same in both modes, so train mode = eval mode on the mixed images."""
    from stitchkit_snnet.ls import mix_images, seeded_rngs

    images = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    train = Pool.from_method(SNNetMethod(), drop_path_rows(0.0))
    LeastSquaresInitializer(mode="train").initialize(train, InitContext(images=images, seed=7))
    with seeded_rngs(7):
        mixed = mix_images(images, 0.8, 1.0, 0.5)
    assert not torch.equal(mixed, images[:10])
    evalp = Pool.from_method(SNNetMethod(), drop_path_rows(0.0))
    LeastSquaresInitializer().initialize(evalp, InitContext(images=mixed))
    for k, v in stitch_state(evalp).items():
        assert torch.equal(stitch_state(train)[k], v), k


def test_train_mode_runs_drop_path_seeded_and_restores_rng_and_modes():
    images = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    no_mix = dict(mixup_alpha=0.0, cutmix_alpha=0.0)
    results = []
    for seed in (3, 3, 4):
        pool = Pool.from_method(SNNetMethod(), drop_path_rows(0.5))
        pool.eval()
        torch.manual_seed(123)
        LeastSquaresInitializer(mode="train", **no_mix).initialize(pool, InitContext(images=images, seed=seed))
        after = torch.rand(3)
        torch.manual_seed(123)
        assert torch.equal(after, torch.rand(3))  # the global generator is left as it was
        assert not any(m.training for m in pool.modules())  # modes restored
        results.append(stitch_state(pool))
    evalp = Pool.from_method(SNNetMethod(), drop_path_rows(0.5))
    LeastSquaresInitializer().initialize(evalp, InitContext(images=images))
    key = "s0_1_0.weight"
    assert torch.equal(results[0][key], results[1][key])  # same seed, same drop-path draws
    assert not torch.equal(results[0][key], results[2][key])  # another seed, other draws
    assert not torch.equal(results[0][key], stitch_state(evalp)[key])  # drop-path changed the fit


def test_ls_options_are_checked():
    with pytest.raises(ConfigError, match="mode must be one of eval, train, got 'training'"):
        LeastSquaresInitializer(mode="training")
    with pytest.raises(ConfigError, match="mixup_alpha and cutmix_alpha must be >= 0"):
        LeastSquaresInitializer(mixup_alpha=-1.0)
    pool = Pool.from_method(SNNetMethod(), drop_path_rows(0.0))
    with pytest.raises(ConfigError, match="needs at least 2"):
        LeastSquaresInitializer(mode="train").initialize(pool, InitContext(images=torch.zeros(1, 3, 8, 8)))


def dead_channel_places(monkeypatch):
    """A pool whose layer ``s0_1_0`` is shared by front inputs 1 and 2 (ends 0 and 1): front channel 3 is
    dead at input 1 (values 1e-9 of the others, as a ReLU channel that fires almost never) and alive at
    input 2; ends are a fixed affine map of the front plus noise the fit cannot explain."""
    rows = [tiny(4, 2), tiny(6, 2)]
    pool = Pool.from_method(SNNetMethod(), rows)
    g = torch.Generator().manual_seed(5)
    alive = torch.randn(4, 16, 4, generator=g, dtype=torch.float64)
    dead = alive.clone()
    dead[..., 3] *= 1e-9
    fronts = {p: alive for p in range(4)}
    fronts[1] = dead
    a, c = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    noise = {q: 0.1 * torch.randn(4, 16, 6, generator=g, dtype=torch.float64) for q in range(4)}
    ends = {q: alive @ a.T + c + noise[q] for q in range(4)}
    monkeypatch.setattr(rows[0], "forward_taps", CraftedTaps(rows[0], fronts))
    monkeypatch.setattr(rows[1], "forward_taps", CraftedTaps(rows[1], ends))
    return pool, fronts, ends


def reference_pinv_solution(front: torch.Tensor, end: torch.Tensor, rcond: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: numpy's SVD pseudo-inverse of ``[front, 1]`` with an explicit cut-off."""
    x = front.reshape(-1, front.shape[-1]).numpy()
    a = np.concatenate([x, np.ones((len(x), 1))], 1)
    theta = np.linalg.pinv(a, rcond=rcond) @ end.reshape(-1, end.shape[-1]).numpy()
    return theta[:-1].T, theta[-1]


def test_official_solver_keeps_a_shared_layer_with_a_dead_channel_bounded(monkeypatch):
    places = [(1, 0), (1, 1), (2, 0), (2, 1)]  # s0_1_0's (front input, end input) places
    images = torch.zeros(4, 3, 8, 8)
    fits = {}
    for solver in ("official", "exact"):
        pool, fronts, ends = dead_channel_places(monkeypatch)
        LeastSquaresInitializer(solver=solver).initialize(pool, InitContext(images=images))
        fits[solver] = pool.stitches["s0_1_0"]
    # the official rule, computed independently per place with numpy and averaged over the places
    rcond = 64 * float(np.finfo(np.float32).eps)  # max(4 * 16 tokens, 4 + 1 columns) * eps
    refs = [reference_pinv_solution(fronts[p], ends[q], rcond) for p, q in places]
    w_ref, b_ref = sum(w for w, _ in refs) / 4, sum(b for _, b in refs) / 4
    official = fits["official"]
    np.testing.assert_allclose(official.weight.detach().double().numpy(), w_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(official.bias.detach().double().numpy(), b_ref, rtol=1e-6, atol=1e-6)
    # the official code itself: a float32 pseudo-inverse with torch's default cut-off
    ps = [torch.linalg.pinv(torch.cat([fronts[p].reshape(64, 4), torch.ones(64, 1, dtype=torch.float64)], 1).float())
          @ ends[q].reshape(64, 6).float() for p, q in places]
    ps_w = (sum(ps) / 4)[:-1].T
    torch.testing.assert_close(official.weight.detach(), ps_w, rtol=1e-4, atol=1e-4)
    # bounded vs not: the exact solve weights the dead channel by ~noise / 1e-9 at input 1, and the
    # mean carries that into input 2, where the channel is alive and the stitched features blow up
    assert official.weight.abs().max() < 10 < 1e5 < fits["exact"].weight.abs().max()

    def residual(layer: torch.nn.Module) -> float:
        x, y = fronts[2].reshape(64, 4).float(), ends[0].reshape(64, 6).float()
        return float((layer(x).detach() - y).norm() / y.norm())

    assert residual(official) < 0.5 < 1e3 < residual(fits["exact"])


def test_solver_options_and_ridge():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    # ridge: the normal equations with lam = ridge * trace(A^T A) / cols(A) on the weight only
    a = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)
    lam = 0.3 * float(torch.trace(a.T @ a)) / 4
    theta = torch.linalg.solve(a.T @ a + lam * torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)), a.T @ y)
    w, b = solve_affine(x, y, ridge=0.3)
    torch.testing.assert_close(w, theta[:-1].T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b, theta[-1], rtol=1e-10, atol=1e-10)
    # well-conditioned features: the cut-off drops nothing, both solvers agree to rounding
    w_off, b_off = solve_affine(x, y, "official")
    w_ex, b_ex = solve_affine(x, y, "exact")
    torch.testing.assert_close(w_off, w_ex, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="solver must be one of official, exact, got 'pinv'"):
        LeastSquaresInitializer(solver="pinv")
    with pytest.raises(ConfigError, match="ridge must be >= 0"):
        LeastSquaresInitializer(ridge=-0.1)
    with pytest.raises(ConfigError, match="least squares: solver must be one of"):
        solve_affine(x, y, "lstsq")
