"""Logits of an imported official SN-Net checkpoint against the official forward, for every configuration.

Random DeiT-Ti/S/B weights (timm names, any image size: the default 64 keeps
it quick on a CPU) are written as an official ``SNNet`` checkpoint
(``{"model": state_dict, "args": Namespace}``), imported with
``stitchkit.import_snnet`` and compared configuration by configuration.

The reference forward is, by default, the official semantics restated in
tests/test_snnet_import.py. With ``--official DIR`` (a checkout of
ziplab/SN-Net's ``stitching_deit``; its ``logger.py`` needs ``params.py``'s
command line, so a stand-in logger is injected) the checkpoint is written by
the official ``SNNet`` module itself and its own ``forward`` is the
reference.

    OMP_NUM_THREADS=1 python benchmarks/snnet_import_check.py [--img-size 64] [--official PATH/stitching_deit]
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import tempfile
import time
import types

import torch

import stitchkit

ANCHORS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


def timm_anchors(img_size: int) -> list[torch.nn.Module]:
    import timm

    torch.manual_seed(0)
    out = []
    for name in ANCHORS:
        m = timm.create_model(name, pretrained=False, img_size=img_size)
        with torch.no_grad():  # random, non-trivial norms (timm initialises them to 1 / 0)
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        out.append(m.eval())
    return out


def official_snnet(source: pathlib.Path, anchors: list[torch.nn.Module]) -> torch.nn.Module:
    sys.modules["logger"] = types.SimpleNamespace(logger=logging.getLogger("snnet"))  # type: ignore[assignment]
    sys.path.insert(0, str(source))
    import snnet  # type: ignore[import-not-found]

    for a in anchors:  # the two methods the official ViTAnchor adds to timm's VisionTransformer
        a.forward_patch_embed = types.MethodType(lambda self, x: self._pos_embed(self.patch_embed(x)), a)
    model = snnet.SNNet(anchors)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layers in model.stitch_layers:
            for layer in layers:
                layer.transform.weight.copy_(torch.randn(layer.transform.weight.shape, generator=g) * 0.05)
                layer.transform.bias.copy_(torch.randn(layer.transform.bias.shape, generator=g) * 0.05)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--official", type=pathlib.Path, help="ziplab/SN-Net stitching_deit directory")
    args = ap.parse_args()

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from test_snnet_import import official_configs, official_forward

    anchors = timm_anchors(args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = pathlib.Path(tmp) / "checkpoint.pth"
        if args.official:
            ref_model = official_snnet(args.official, anchors)
            state = ref_model.state_dict()
        else:
            from test_snnet_import import official_state

            state = official_state(anchors, 12, nearest=True)
        torch.save({"model": state, "epoch": 49, "args": argparse.Namespace(model="snnet")}, ckpt)
        t0 = time.perf_counter()
        pool = stitchkit.import_snnet(ckpt, ANCHORS)
        import_s = time.perf_counter() - t0
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(2))
    configs = official_configs(3, 12, nearest=True)
    worst, equal, agree = 0.0, 0, 0
    native = stitchkit.Pool(pool.adapters, list(pool.stitch_specs.values()), pool.paths, method="snnet")
    native.stitches.load_state_dict(pool.stitches.state_dict())  # the same weights, final norm kept
    norm_gap: list[float] = []
    norm_agree = 0
    with torch.no_grad():
        for i, (config, path) in enumerate(zip(configs, pool.paths)):
            if args.official:
                ref_model.reset_stitch_id(i)
                ref = ref_model(x)
            else:
                ref = official_forward(anchors, state, True, config, x)
            got = pool.descendant(path).eval()(x)
            worst = max(worst, float((got - ref).abs().max()))
            equal += bool(torch.equal(got, ref))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            if len(path.segments) > 1:
                kept = native.descendant(path).eval()(x)
                norm_gap.append(float((kept - ref).abs().max()))
                norm_agree += int((kept.argmax(-1) == ref.argmax(-1)).sum())
    reference = f"official SNNet.forward ({args.official})" if args.official else "the restated official forward"
    print(f"{len(pool.paths)} configurations, {args.img_size}x{args.img_size} images, batch {args.batch}; reference: {reference}")
    print(f"bitwise equal: {equal}/{len(pool.paths)}; max |logit difference| {worst:.3g}; "
          f"top-1 agreement {agree}/{len(pool.paths) * args.batch}; import took {import_s:.1f} s")
    print(f"with the final norm kept (a native pool, same weights), stitched configurations: max |logit difference| "
          f"{min(norm_gap):.3g}..{max(norm_gap):.3g}, top-1 agreement {norm_agree}/{len(norm_gap) * args.batch}")


if __name__ == "__main__":
    main()
