"""tm-ls: TM refined by least squares towards TM; its two limits are TM and LS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_row
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import InitContext
from stitchkit.pool.pool import Pool
from stitchkit.core.spec import RowShape


def make_pool(registry):
    rows = [tiny_row(RowShape(3, 16, 2), seed=1), tiny_row(RowShape(3, 32, 4), seed=2)]
    pool = Pool.from_method(registry.method("learngene-pool"), rows)
    registry.get("initializer", "tm").example(pool=pool)  # the W matrices distillation would leave
    return pool


def weights(pool):
    return {n: (l.weight.detach().clone(), l.bias.detach().clone()) for n, l in pool.stitches.items()}


def run(registry, name, images, **kw):
    pool = make_pool(registry)
    registry.create("initializer", name, **kw).initialize(pool, InitContext(images=images, seed=0))
    return weights(pool)


def test_limits_are_tm_and_ls(registry):
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tm, ls = run(registry, "tm", images), run(registry, "ls", images)
    near_tm = run(registry, "tm-ls", images, ridge=1e9)
    near_ls = run(registry, "tm-ls", images, ridge=0.0)
    middle = run(registry, "tm-ls", images, ridge=1.0)
    for name in tm:
        torch.testing.assert_close(near_tm[name][0], tm[name][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(near_tm[name][1], tm[name][1], atol=1e-5, rtol=0)
        torch.testing.assert_close(near_ls[name][0], ls[name][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(near_ls[name][1], ls[name][1], atol=1e-4, rtol=1e-4)
    # strictly between, on the ridge path: theta(r) = argmin ||A theta - y||^2 + lam(r) ||theta - theta_TM||^2
    # has a fit residual that grows and a distance to TM that shrinks strictly with r (LS != TM here)
    from stitchkit.pool.features import collect_stitch_features

    feats = {f.name: f for f in collect_stitch_features(make_pool(registry), images)}
    assert set(feats) == set(tm)  # one place per layer in a sequential pool

    def residual(name, wb):
        f = feats[name]
        x, y = f.front.reshape(-1, f.front.shape[-1]).double(), f.end.reshape(-1, f.end.shape[-1]).double()
        return float(((x @ wb[0].double().T + wb[1].double() - y) ** 2).sum())

    def to_tm(name, wb):
        return float(torch.cat([(wb[0] - tm[name][0]).flatten(), wb[1] - tm[name][1]]).double().norm())

    for name in tm:
        r_ls, r_mid, r_tm = residual(name, ls[name]), residual(name, middle[name]), residual(name, tm[name])
        assert r_ls < r_mid < r_tm, (name, r_ls, r_mid, r_tm)
        assert 1e-3 < to_tm(name, middle[name]) < to_tm(name, ls[name]), name
        assert r_mid - r_ls > 1e-6 * r_tm and r_tm - r_mid > 1e-6 * r_tm  # by more than float32 rounding


def test_ridge_solution_matches_normal_equations():
    from stitchkit_learngene.initializers import solve_ridge_towards

    g = np.random.default_rng(0)
    x, y = g.normal(size=(50, 4)), g.normal(size=(50, 3))
    w0, b0 = g.normal(size=(3, 4)), g.normal(size=3)
    w, b = solve_ridge_towards(torch.tensor(x), torch.tensor(y), torch.tensor(w0), torch.tensor(b0), ridge=0.5)
    a = np.hstack([x, np.ones((50, 1))])
    lam = 0.5 * np.trace(a.T @ a) / 5
    theta = np.linalg.solve(a.T @ a + lam * np.eye(5), a.T @ y + lam * np.vstack([w0.T, b0]))
    np.testing.assert_allclose(w.numpy(), theta[:4].T, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), theta[4], atol=1e-10)


def test_errors(registry):
    with pytest.raises(ConfigError, match="ridge must be >= 0"):
        registry.create("initializer", "tm-ls", ridge=-1.0)
    pool = make_pool(registry)
    with pytest.raises(ConfigError, match="needs a batch of training images"):
        registry.create("initializer", "tm-ls").initialize(pool, InitContext(images=None))
