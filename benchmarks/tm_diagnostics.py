"""How well do distilled rows satisfy the assumptions TM initialisation rests on?

    python benchmarks/tm_diagnostics.py benchmarks/results/compare/seed0/lg6-tm

TM maps a narrow feature back to the ancestry with ``W.T`` (TM-pinv: with
``pinv(W)``) and assumes the wide row's features equal the ancestry's. On the
test images this prints, per distilled level, relative squared errors
(``||a - b||^2 / ||b - mean(b)||^2``; 0 is perfect, 1 is no better than the mean):

* ``fit``: ``B_anc @ W`` against the narrow row's ``B_aux`` (what distillation minimised);
* ``back-T`` / ``back-pinv``: ``B_aux @ W.T`` / ``B_aux @ pinv(W)`` against ``B_anc``
  (what TM / TM-pinv assume);
* ``wide``: the wide row's block output against the ancestry's at the same relative depth
  (what TM assumes of the wide row; distilled on the last block only by default).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch

from stitchkit import storage
from stitchkit.engine import DataConfig, build_data, load_model
from stitchkit.engine.checkpoint import read_checkpoint
from stitchkit.interfaces import TapRequest
from stitchkit.vit import TimmViT


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a learngene build folder (pool.safetensors, distill-row*/)")
    p.add_argument("--images", type=int, default=256)
    args = p.parse_args(argv)
    run = pathlib.Path(args.run)
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
        wide = rows[-1]
        l = wide.shape.depth
        wouts = wide.forward_taps(x, TapRequest(blocks=tuple(range(l))))
        print(f"wide row {wide.shape} vs ancestry at the same relative depth:")
        for k in range(1, l + 1):
            a = round(k * L / l)
            err = rel(wouts.blocks[k - 1], anc.blocks[a - 1])
            report[f"wide_block{k}"] = {"ancestry_block": a, "rel_err": err}
            print(f"  wide block {k} vs ancestry block {a}: {err:.3f}")
    out = run / "tm_diagnostics.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
