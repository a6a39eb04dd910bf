"""How well do distilled rows satisfy the assumptions TM initialisation rests on, and which one breaks?

    python benchmarks/tm_diagnostics.py benchmarks/results/compare/seed0/lg6-tm
    python benchmarks/tm_diagnostics.py runs/tm-seed0 --make --seed 0   # distil one (compare_methods' recipe)

TM maps a narrow feature back to the ancestry with ``W.T`` (TM-pinv: with
``pinv(W)``) and assumes the wide row's features equal the ancestry's. On the
test images this prints, per distilled level, relative squared errors
(``||a - b||^2 / ||b - mean(b)||^2``; 0 is perfect, 1 is no better than the mean):

* ``fit``: ``B_anc @ W`` against the narrow row's ``B_aux`` (what distillation minimised);
* ``back-T`` / ``back-pinv``: ``B_aux @ W.T`` / ``B_aux @ pinv(W)`` against ``B_anc``
  (what TM / TM-pinv assume);
* ``wide``: the wide row's block output against the ancestry's at the same relative depth
  (what TM assumes of the wide row; distilled on the last block only by default).

Then three experiments, each judged by test top-1 right after initialisation:

* **W's movement**: cosine between each learned ``W`` and its initial value (rebuilt from
  the build's seeds), and ``||W - W0|| / ||W0||``;
* **TM with a least-squares W**: ``W`` solved exactly (``min ||B_anc W - B_aux||``) per level
  on training images, averaged, then TM as usual; if TM failed only because distillation fits
  ``W`` loosely, this would rescue it;
* **where a narrow -> ancestry map works**: per cut ``k``, an affine least-squares map from the
  narrow row's block-``k`` output to the ancestry's output at the same relative depth, fed
  (a) into the ancestry's remaining blocks and head, (b) into the wide row's remaining blocks
  and head (what TM does); LS straight to the wide row's features is the reference.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch

from stitchkit.io import storage
from stitchkit.engine import DataConfig, build_data, load_model
from stitchkit.engine.checkpoint import read_checkpoint
from stitchkit.core.interfaces import TapRequest
from stitchkit.families.vit import TimmViT


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    b2 = b.reshape(-1, b.shape[-1]).double()
    a2 = a.reshape(-1, a.shape[-1]).double()
    return float(((a2 - b2) ** 2).sum() / ((b2 - b2.mean(0)) ** 2).sum())


def distilled_row(run: pathlib.Path, r: int, arch: dict) -> TimmViT:
    ckpts = sorted((run / f"distill-row{r}" / "checkpoints").glob("step-*.json"))
    _, tensors = read_checkpoint(ckpts[-1])
    row = TimmViT.from_arch(arch)
    prefix = "model.student."
    row.model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return row.model.eval() and row


def make_run(run: pathlib.Path, seed: int, depth: int = 6) -> None:
    """Ancestry + distilled rows as compare_methods.py builds its ``lg<depth>-tm`` variant (fine-tuning: 1 step)."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from compare_methods import BASE

    from stitchkit.engine.settings import resolve
    from stitchkit.engine.standalone import train_model
    from stitchkit.core.registry import Registry

    train = {**BASE["train"], "seed": seed}
    ancestry = train_model(resolve({**BASE, "train": {**train, "epochs": 25}}), run.parent / f"{run.name}-ancestry")
    cfg = {"method": "learngene-pool", **BASE, "train": train, "learngene": {
        "ancestry": str(ancestry), "rows": f"{depth}x16:1,{depth}x64:4", "initializer": "tm",
        "distill": {"epochs": 15}, "finetune": {"max_steps": 1}}}
    reg = Registry()
    reg.method("learngene-pool").build(resolve(cfg), out_dir=run, registry=reg)


def initial_matrices(config: dict, ancestry, r: int) -> list[torch.Tensor]:  # noqa: ANN001
    """The ``W`` distillation of row ``r`` started from, rebuilt with the build's seeds (pipeline.distil_rows)."""
    from stitchkit.engine import TrainConfig
    from stitchkit.engine.config import section
    from stitchkit.engine.data import derive_seed, seeded
    from stitchkit.core.registry import Registry
    from stitchkit_learngene.config import LearngeneConfig
    from stitchkit_learngene.designs import PoolDesign

    lg = section(config, "learngene", LearngeneConfig)
    train = lg.train_config(TrainConfig.from_config(config), "distill")
    design = PoolDesign(lg.rows, init=lg.init)
    shape = design.rows(ancestry.shape)[r]
    with seeded(derive_seed("learngene-row", train.seed, r)):
        row = type(ancestry).from_arch(ancestry.resized(shape))
        design.initialize(row, ancestry)
        loss = Registry().create("loss", "learngene", ancestry.shape, shape,
                                 levels=None if lg.levels == "auto" else lg.levels, tau=lg.tau, terms=tuple(lg.terms))
    return [w.detach().clone() for w in loss.block_matrices()]


def run_blocks(adapter, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:  # noqa: ANN001
    for b in range(start, stop):
        x = adapter.blocks[b](x)
    return x


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(-1) == y).float().mean())


def experiments(pool, rows, ancestry, pairs, xtr, xte, yte, report: dict) -> None:  # noqa: ANN001
    """TM with a least-squares W, and narrow -> ancestry maps fed into the ancestry vs into the wide row."""
    from stitchkit.engine import evaluate_pool
    from stitchkit.core.interfaces import InitContext
    from stitchkit_learngene.extras import store_matrices
    from stitchkit_learngene.initializers import TMInitializer
    from stitchkit_snnet.ls import LeastSquaresInitializer, solve_affine

    narrow, wide = rows[0], rows[-1]
    L, l = ancestry.shape.depth, wide.shape.depth
    anc_tr = ancestry.forward_taps(xtr, TapRequest(blocks=tuple(range(L))))
    nar_tr = narrow.forward_taps(xtr, TapRequest(blocks=tuple(range(l))))
    wide_tr = wide.forward_taps(xtr, TapRequest(blocks=tuple(range(l))))
    loader = [(xte, yte)]

    def accuracies(initializer, extras=None) -> dict[str, float]:  # noqa: ANN001
        for r, row in enumerate(rows):
            pool.rows[r].load_state_dict(row.model.state_dict())
        if extras is not None:
            store_matrices(pool.extras, 0, "W", extras)
        initializer.initialize(pool, InitContext(images=xtr, seed=0))
        return {name: res["top1"] for name, res in evaluate_pool(pool, loader).items()}

    learned = [pool.extras[f"learngene.row0.W.{i}"].clone() for i in range(len(pairs))]
    ls_w = []
    for i, (a, b) in enumerate(pairs):
        xa = anc_tr.blocks[a].reshape(-1, ancestry.shape.width).double()
        yb = nar_tr.blocks[b].reshape(-1, narrow.shape.width).double()
        w = torch.linalg.lstsq(xa, yb, driver="gelsd").solution.float()  # d x d'
        ls_w.append(w)
        report.setdefault("ls_W", {})[f"level{i}"] = {"fit_learned_W": rel(anc_tr.blocks[a] @ learned[i], nar_tr.blocks[b]),
                                                      "fit_ls_W": rel(anc_tr.blocks[a] @ w, nar_tr.blocks[b])}
    acc = {"tm": accuracies(TMInitializer(), learned), "tm_ls_W": accuracies(TMInitializer(), ls_w),
           "ls": accuracies(LeastSquaresInitializer())}
    store_matrices(pool.extras, 0, "W", learned)
    report["after_init_top1"] = acc
    print("\ntest top-1 right after initialisation (TM with the learned W, TM with a least-squares W, LS):")
    for name in acc["tm"]:
        print(f"  {name:<28} tm {acc['tm'][name]:5.1f}   tm(LS W) {acc['tm_ls_W'][name]:5.1f}   ls {acc['ls'][name]:5.1f}")

    print("\nnarrow block k -> (affine LS map) -> ancestry output at block a, then the rest of ...")
    print(f"{'k':>3} {'a':>3} {'map fit':>8} {'ancestry':>9} {'wide row':>9} {'LS to wide':>11}")
    anc_te = ancestry.forward_taps(xte, TapRequest(blocks=tuple(range(L))))
    nar_te = narrow.forward_taps(xte, TapRequest(blocks=tuple(range(l))))
    hybrid = {}
    for k in range(1, l):
        a = round(k * L / l)
        w, bias = solve_affine(nar_tr.blocks[k - 1], anc_tr.blocks[a - 1])
        w2, b2 = solve_affine(nar_tr.blocks[k - 1], wide_tr.blocks[k - 1])
        mapped = nar_te.blocks[k - 1] @ w.float().T + bias.float()
        into_anc = ancestry.head()(run_blocks(ancestry, mapped, a, L))
        into_wide = wide.head()(run_blocks(wide, mapped, k, l))
        direct = wide.head()(run_blocks(wide, nar_te.blocks[k - 1] @ w2.float().T + b2.float(), k, l))
        fit = rel(mapped, anc_te.blocks[a - 1])
        hybrid[str(k)] = {"ancestry_block": a, "map_fit": fit, "into_ancestry": top1(into_anc, yte),
                          "into_wide": top1(into_wide, yte), "ls_to_wide": top1(direct, yte)}
        h = hybrid[str(k)]
        print(f"{k:>3} {a:>3} {fit:>8.3f} {h['into_ancestry']:>9.1f} {h['into_wide']:>9.1f} {h['ls_to_wide']:>11.1f}")
    report["narrow_to_ancestry_maps"] = hybrid
    report["reference_top1"] = {"ancestry": top1(ancestry.model(xte), yte), "narrow": top1(narrow.model(xte), yte),
                                "wide": top1(wide.model(xte), yte)}
    print(f"reference top-1: {report['reference_top1']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a learngene build folder (pool.safetensors, distill-row*/)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--make", action="store_true", help="first build the run (ancestry + distilled rows) there")
    p.add_argument("--seed", type=int, default=0, help="seed of --make")
    args = p.parse_args(argv)
    run = pathlib.Path(args.run)
    if args.make:
        make_run(run, args.seed)
    pool = storage.load_pool(run / "pool.safetensors")
    config = pool.info["provenance"]["config"]
    ancestry = load_model(config["learngene"]["ancestry"])
    ancestry.model.eval()
    data = build_data(DataConfig.from_config(config))
    x = torch.stack([data.test[i][0] for i in range(min(args.images, len(data.test)))])
    levels = {int(r): pairs for r, pairs in pool.info["learngene"]["levels"].items()}
    rows = [distilled_row(run, r, pool.adapters[r].arch()) for r in range(len(pool.adapters))]
    L = ancestry.shape.depth
    report = {}
    with torch.no_grad():
        anc = ancestry.forward_taps(x, TapRequest(blocks=tuple(range(L))))
        narrow = rows[0]
        pairs = [tuple(p) for p in levels[0]]  # (ancestry block, auxiliary block), 0-based indices
        outs = narrow.forward_taps(x, TapRequest(blocks=tuple(b for _, b in pairs)))
        ws = [pool.extras[f"learngene.row0.W.{i}"] for i in range(len(pairs))]
        w_avg = torch.stack(ws).mean(0)
        print(f"narrow row {narrow.shape}: levels (ancestry block, narrow block), 1-based: {[(a + 1, b + 1) for a, b in pairs]}")
        print(f"{'level':>6} {'fit':>7} {'back-T':>7} {'back-pinv':>9} {'back-T(avg W)':>13} {'W^T W off-identity':>19}")
        for i, (a, b) in enumerate(pairs):
            b_anc, b_aux = anc.blocks[a], outs.blocks[b]
            w = ws[i]
            fit = rel(b_anc @ w, b_aux)
            back_t = rel(b_aux @ w.t(), b_anc)
            back_p = rel(b_aux @ torch.linalg.pinv(w), b_anc)
            back_avg = rel(b_aux @ w_avg.t(), b_anc)
            gram = w.t() @ w
            off = float((gram - torch.eye(gram.shape[0])).norm() / torch.eye(gram.shape[0]).norm())
            report[f"level{i}"] = {"fit": fit, "back_T": back_t, "back_pinv": back_p, "back_T_avgW": back_avg, "WtW_off_identity": off}
            print(f"{i:>6} {fit:>7.3f} {back_t:>7.3f} {back_p:>9.3f} {back_avg:>13.3f} {off:>19.3f}")
        init = initial_matrices(config, ancestry, 0)
        print("W against its initial value (the d x d' matrix distillation started from):")
        for i, (w, w0) in enumerate(zip(ws, init)):
            cos = float((w * w0).sum() / (w.norm() * w0.norm()))
            moved = float((w - w0).norm() / w0.norm())
            report.setdefault("W_movement", {})[f"level{i}"] = {"cosine_to_init": cos, "relative_change": moved}
            print(f"  level {i}: cosine to init {cos:.3f}, ||W - W0|| / ||W0|| = {moved:.3f}")
        wide = rows[-1]
        l = wide.shape.depth
        wouts = wide.forward_taps(x, TapRequest(blocks=tuple(range(l))))
        print(f"wide row {wide.shape} vs ancestry at the same relative depth:")
        for k in range(1, l + 1):
            a = round(k * L / l)
            err = rel(wouts.blocks[k - 1], anc.blocks[a - 1])
            report[f"wide_block{k}"] = {"ancestry_block": a, "rel_err": err}
            print(f"  wide block {k} vs ancestry block {a}: {err:.3f}")
        train_loader = data.eval_loader("train", batch_size=args.images)
        xtr = next(iter(train_loader))[0]
        yte = torch.tensor([data.test[i][1] for i in range(len(data.test))])
        xte = torch.stack([data.test[i][0] for i in range(len(data.test))])
        experiments(pool, rows, ancestry, pairs, xtr, xte, yte, report)
    out = run / "tm_diagnostics.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
