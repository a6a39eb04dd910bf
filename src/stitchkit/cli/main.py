"""``stitchkit`` command line: one subcommand per user task.

Every stitchkit error is printed as one line on stderr (``stitchkit: error:
...``) with exit status 2; tracebacks are shown only with ``--traceback``
(before or after the command name). A closed output pipe (``stitchkit info
POOL | head -1``) ends the command quietly with status 141, the shell's status
of a process ended by SIGPIPE, as ``cat`` or ``yes`` would. Each command imports what it needs inside its
function (start-up time: ``--help``, ``info`` and ``plugins`` never import torch).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from ..core.errors import ConfigError, StitchkitError


def _cmd_plan(args: argparse.Namespace) -> int:
    from ..apps.planner import format_plan, plan
    from ..core.spec import parse_rows

    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    result = plan(
        args.method,
        ancestry=args.ancestry,
        rows=parse_rows(args.rows) if args.rows else None,
        anchors=[a.strip() for a in args.anchors.split(",") if a.strip()] if args.anchors else None,
        adapter=args.adapter,
        model_kwargs=kwargs,
        method_options=_options(args.option or []),
    )
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    from ..apps.cost import format_cost, training_cost
    from ..engine.settings import load_config

    config = load_config(args.config, args.set or [])
    result = training_cost(
        config,
        train_images=args.images,
        eval_images=args.eval_images,
        num_classes=args.num_classes,
        pretrain_epochs=args.pretrain_epochs,
        gpu_tflops=args.gpu_tflops,
        mfu=args.mfu,
        alone=args.alone,
    )
    print(json.dumps(result, indent=2) if args.json else format_cost(result))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    """List every component; exit 1 when a plugin is broken or two plugins register one name."""
    from ..core.registry import KINDS, default_registry

    reg = default_registry()
    if args.json:
        out = {
            "components": [
                {
                    "kind": e.kind, "name": e.name, "plugin": e.plugin,
                    "package": reg.packages.get(e.plugin, ("", ""))[0],
                    "version": reg.packages.get(e.plugin, ("", ""))[1],
                    "summary": e.summary,
                    "class": f"{e.cls.__module__}.{e.cls.__qualname__}",
                    "options": [o.as_dict() for o in e.options],
                }
                for e in reg.entries()
            ],
            "broken": [{"plugin": b.plugin, "package": b.package, "error": b.error} for b in reg.broken],
            "conflicts": [{"kind": k, "name": n, "plugins": p} for (k, n), p in reg.conflicts().items()],
        }
        print(json.dumps(out, indent=2))
    else:
        for kind in KINDS:
            entries = reg.entries(kind)
            print(f"{kind}:")
            if not entries:
                print("  (none)")
            for e in entries:
                print(f"  {e.name:<22} [{e.plugin}]  {e.summary}")
                if e.options:
                    opts = ", ".join(o.name + ("" if o.required else f"={o.default!r}") for o in e.options)
                    print(f"  {'':<22} options: {opts}")
        for (kind, name), plugins in reg.conflicts().items():
            print(f"conflict: {kind} {name!r} registered by {', '.join(plugins)} (unusable until one is removed)")
        for b in reg.broken:
            print(f"broken plugin: {b.plugin} (package {b.package}): {b.error}")
    return 1 if reg.broken or reg.conflicts() else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..apps.report import format_model_info, format_pool_info, is_model_file, model_file_info, pool_info

    if is_model_file(args.pool):  # a single network from `stitchkit train`
        model = model_file_info(args.pool)
        print(json.dumps(model, indent=2) if args.json else format_model_info(model))
        return 0
    info = pool_info(args.pool)
    if args.verify:
        from ..io.storage import read_pool_structure, verify_data

        read_pool_structure(args.pool)  # every row rebuilt on the meta device: a pool that cannot load fails here
        info["data_sha256"] = verify_data(args.pool)
    print(json.dumps(info, indent=2) if args.json else format_pool_info(info))
    if args.verify and not args.json:
        print(f"verified: every row builds from its arch and matches the file's tensors; "
              f"the tensor data matches its stored sha256 {info['data_sha256']}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from ..apps.cards import write_pool_card
    from ..io.files import refuse_overwrite

    if args.output:
        refuse_overwrite(args.output, [args.pool], "-o output")
    print(f"wrote {write_pool_card(args.pool, args.output)}")
    return 0


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads N``: torch's CPU threads in this process (unset: torch's default)."""
    if getattr(args, "threads", None) is not None:
        import torch

        from ..core.limits import check_int

        torch.set_num_threads(check_int(args.threads, "--threads", maximum=1024))


def _cmd_build(args: argparse.Namespace) -> int:
    from ..apps.report import best_per_size, format_pool_info, pool_info
    from .build import run_build

    _set_threads(args)
    result = run_build(args.config, args.set or [], out_dir=args.out, resume=not args.restart)
    from .console import rank

    if rank() == 0:
        info = pool_info(result.pool)
        print(format_pool_info(info))
        best = best_per_size(info["descendants"])
        if best:
            print("\nbest at or below each size (a larger descendant is listed only if it is more accurate):")
            print("\n".join(f"  #{d['index']:<3} {d['params']:>12,} params {d['macs']:>14,} MACs  top-1 {d['top1']:.2f}" for d in best))
        if result.unchanged:
            print(f"\npool unchanged: {result.pool} is a finished build of this config (nothing rerun; --restart builds it again)")
        else:
            print(f"\npool written to {result.pool}")
            print(f"model card written to {result.pool.with_suffix('.md')}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from ..apps.budget import select_descendant

    row = select_descendant(
        args.pool,
        max_params=args.max_params,
        max_macs=args.max_macs,
        max_latency_ms=args.max_latency_ms,
        batch_size=args.batch_size,
        device=args.device,
    )
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        extra = f", {row['latency_ms']:.2f} ms at batch {row['batch_size']} on {row['device']}" if "latency_ms" in row else ""
        print(
            f"#{row['index']} {row['name']}: top1 {row['top1']:.2f}, {row['params']:,} params, "
            f"{row['macs']:,} MACs{extra}"
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..io import storage
    from ..io.files import refuse_overwrite

    if args.hf is not None:
        if args.output or args.timm or args.onnx:
            raise ConfigError("--hf DIR writes the whole model folder: give it without -o, --timm or --onnx")
        from ..apps.hub import export_hf

        config = export_hf(args.pool, args.descendant, args.hf)
        how = (f"timm.create_model('local-dir:{args.hf}', pretrained=True)" if "architecture" in config
               else f"stitchkit.load_exported({str(args.hf)!r})")
        print(f"wrote {args.hf}/ (config.json, model.safetensors, README.md): load it with {how}")
        return 0
    if not args.output:
        raise ConfigError("give -o FILE (a descendant file) or --hf DIR (a timm / Hugging Face model folder)")
    if args.onnx:  # check everything an output needs before writing anything
        import importlib.util

        refuse_overwrite(args.onnx, [args.pool, args.output], "--onnx output")
        if os.path.abspath(args.onnx) == os.path.abspath(args.output):
            raise ConfigError(f"--onnx {args.onnx} and -o {args.output} name the same file; give two different files")
        if importlib.util.find_spec("onnx") is None:
            raise ConfigError("--onnx needs the onnx package: pip install 'stitchkit[onnx]' (nothing was written)")
    refuse_overwrite(args.output, [args.pool], "-o output")
    if args.timm:
        arch = storage.export_timm_state_dict(args.pool, args.descendant, args.output)
        family, network = storage.plain_row_family(args.output)
        wrote = f"wrote {args.output}: the {family} row's own network ({network}) as a plain state dict (arch {json.dumps(arch)})"
    else:
        storage.export_descendant(args.pool, args.descendant, args.output)
        wrote = f"wrote {args.output}: load it with stitchkit.load_exported({str(args.output)!r})"
    if args.onnx:
        from ..io.onnx_export import export_onnx

        try:
            diff = export_onnx(args.output, args.onnx, timm_state_dict=args.timm)
        except BaseException:  # one failed output fails the command: leave neither file behind
            pathlib.Path(args.output).unlink(missing_ok=True)
            raise
        wrote += f"\nwrote {args.onnx}" + (f" (max |onnx - torch| = {diff:.2e})" if diff is not None else "")
    print(wrote)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..apps.demo import run_demo

    from ..core.limits import check_int

    torch.set_num_threads(check_int(args.threads, "--threads", maximum=1024))
    summary = run_demo(args.out, args.set or [], config_path=args.config, data=args.data)
    print(pathlib.Path(summary["report"]).read_text())
    print(f"wrote {summary['report']}, {summary['plot']} and the pool files "
          f"{', '.join(summary['pools'].values())} in {summary['total_seconds']:.0f} s")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ..io.importing import import_to_file

    options = _options(args.option or [])
    anchors = [a.strip() for a in args.anchors.split(",") if a.strip()]
    pool, out = import_to_file(args.method, args.checkpoint, args.output, anchors=anchors, **options)
    print(f"wrote {out}: {len(pool.paths)} descendants on {len(pool.stitches)} stitch layers")
    return 0


def _options(pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs with TOML values (``kernel_size=3``, ``name="x"``), parsed like ``--set``."""
    from ..engine.config import parse_override
    from ..core.errors import ConfigError

    out: dict[str, object] = {}
    for pair in pairs:
        keys, value = parse_override(pair)
        if len(keys) != 1:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE with a plain key, e.g. kernel_size=3")
        out[keys[0]] = value
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from ..engine.settings import load_config
    from ..engine.standalone import train_model

    from ..engine.distributed import dist_context
    from ..io.files import OutputLock, is_plain_file_name

    if not is_plain_file_name(args.name):
        raise ConfigError(f"--name {args.name!r} must be a plain file name (no '/', not '.' or '..')")
    _set_threads(args)
    config = load_config(args.config, args.set or [])
    lock = OutputLock(args.out, f"stitchkit train {args.config}") if dist_context(config["train"]["device"]).is_main else None
    try:
        if lock is not None:
            lock.acquire()
        path = train_model(config, args.out, name=args.name)
    finally:
        if lock is not None:
            lock.release()
    from ..engine.standalone import trained_summary

    print(trained_summary(path))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stitchkit",
        description="Build many variable-sized networks from one trained model by stitching "
        "(Learngene Pool, SN-Net).",
    )
    from .. import __version__

    p.add_argument("--version", action="version", version=f"stitchkit {__version__}")
    p.add_argument("--traceback", action="store_true", help="show full tracebacks on errors (also accepted after the command)")
    # every command accepts --traceback too; SUPPRESS: a command that is not given it keeps the top-level value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    pl = command("plan", help="list a pool design's descendants with params and MACs, no weights")
    pl.add_argument("--method", default="sequential", help="method (path set) name, see 'stitchkit plugins'")
    pl.add_argument("--ancestry", help="ancestry model name, e.g. deit_base_patch16_224")
    pl.add_argument("--rows", help="auxiliary rows DEPTHxWIDTH:HEADS,..., e.g. 6x192:3,6x768:12; hierarchical rows join "
                    "stages with '/', e.g. 2x32/2x64/2x128/2x256 (see docs/planner.md)")
    pl.add_argument("--anchors", help="comma-separated anchor model names (methods that stitch pretrained models)")
    pl.add_argument("--adapter", default="auto", help="ancestry adapter (default auto: the adapter that recognises each model)")
    pl.add_argument("--num-classes", type=int, help="classifier size (default: the model's)")
    pl.add_argument("--img-size", type=int, help="input image size (default: the model's)")
    pl.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="method option (TOML value), e.g. snnet's nearest_stitching=false, kernel_size=3")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pl.set_defaults(func=_cmd_plan)

    pc = command("cost", help="training compute of a build config on paper (FLOPs per phase; --alone)")
    pc.add_argument("config", help="TOML build config")
    pc.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (TOML value)")
    pc.add_argument("--images", type=int, help="training images (default: read from the data source)")
    pc.add_argument("--eval-images", type=int, help="evaluation images (default: the test split's size)")
    pc.add_argument("--num-classes", type=int, help="classes (default: read from the data source)")
    pc.add_argument("--pretrain-epochs", type=int, default=300,
                    help="epochs at which loaded (pretrained) networks are priced (default 300, DeiT's recipe)")
    pc.add_argument("--alone", action="store_true", help="also the cost of training every descendant on its own")
    pc.add_argument("--gpu-tflops", type=float, help="peak TFLOP/s of one GPU (with --mfu: adds GPU hours)")
    pc.add_argument("--mfu", type=float, help="fraction of the peak reached, e.g. 0.4")
    pc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pc.set_defaults(func=_cmd_cost)

    pg = command("plugins", help="list registered components, their options and the plugin providing each "
                        "(exit 1 if a plugin is broken or two register one name)")
    pg.add_argument("--json", action="store_true")
    pg.set_defaults(func=_cmd_plugins)

    pi = command("info", help="show a pool file (rows, stitch layers, descendants table) or a model file from train (shape, provenance, accuracy)")
    pi.add_argument("pool", help="pool file (.safetensors)")
    pi.add_argument("--json", action="store_true")
    pi.add_argument("--verify", action="store_true", help="also rebuild every row (on the meta device) and check the tensor data against the sha256 stored at write time")
    pi.set_defaults(func=_cmd_info)

    pc = command("card", help="write a pool file's model card (markdown, from its metadata alone)")
    pc.add_argument("pool", help="pool file (.safetensors)")
    pc.add_argument("-o", "--output", help="card file (default: the pool's name with .md)")
    pc.set_defaults(func=_cmd_card)

    pb = command("build", help="run a method's whole pipeline from a TOML config (resumable)")
    pb.add_argument("config", help="TOML config file")
    pb.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (TOML value)")
    pb.add_argument("--out", help="output folder (default: the config's out_dir)")
    pb.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    pb.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice, all cores; 1 when runs share the machine)")
    pb.set_defaults(func=_cmd_build)

    ps = command("select", help="the most accurate descendant within a budget")
    ps.add_argument("pool", help="pool file (.safetensors) with evaluation results")
    ps.add_argument("--max-params", type=int, help="parameter budget")
    ps.add_argument("--max-macs", type=int, help="MACs budget (per image)")
    ps.add_argument("--max-latency-ms", type=float, help="latency budget, measured on this device")
    ps.add_argument("--batch-size", type=int, default=1, help="batch size for the latency budget (default 1)")
    ps.add_argument("--device", help="device for latency (default: cuda if available, else cpu)")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=_cmd_select)

    pe = command("export", help="write one descendant as a standalone model file")
    pe.add_argument("pool", help="pool file (.safetensors)")
    pe.add_argument("descendant", help="descendant name (r0[0:3]+s0_1_3+r1[3:6]), label, or index (3 or #3; a label wins over an index)")
    pe.add_argument("-o", "--output", help="output .safetensors file")
    pe.add_argument("--hf", metavar="DIR", help="write a timm / Hugging Face model folder instead: config.json, "
                    "model.safetensors, README.md (a single-row descendant loads with timm's local-dir:DIR)")
    pe.add_argument("--timm", action="store_true", help="single-row descendants: write a plain timm state dict")
    pe.add_argument("--onnx", help="also write an ONNX model here (needs the onnx package)")
    pe.set_defaults(func=_cmd_export)

    pm = command("import", help="turn a checkpoint of a method's original code into a pool file")
    pm.add_argument("method", help="method whose original code wrote the checkpoint, e.g. snnet")
    pm.add_argument("checkpoint", help="checkpoint file (.pth, read weights-only)")
    pm.add_argument("--anchors", required=True, help="comma-separated model names in the checkpoint, smallest first")
    pm.add_argument("-o", "--output", required=True, help="pool file to write (.safetensors)")
    pm.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="method option (TOML value), e.g. snnet's kernel_size=2, stride=1")
    pm.set_defaults(func=_cmd_import)

    pd = command("demo", help="Learngene Pool vs SN-Net at equal storage on the bundled digits (CPU, minutes)")
    pd.add_argument("--out", default="stitchkit-demo", help="output folder (default stitchkit-demo/)")
    pd.add_argument("--data", default="digits", choices=["digits", "fashion-mnist"],
                    help="data set and its shipped config: digits (bundled, 2 minutes) or fashion-mnist "
                         "(apt-get install dataset-fashion-mnist; a 12,000-image subset, tested on the official "
                         "10,000 images: several times longer, see docs/training.md)")
    pd.add_argument("--config", help="demo config (default: the shipped config of --data, e.g. configs/demo.toml)")
    pd.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. demo.finetune_epochs=20")
    pd.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the demo's models are tiny and extra threads mostly contend)")
    pd.set_defaults(func=_cmd_demo)

    pt = command("train", help="train one network of any family (an ancestry or an anchor) from a TOML config")
    pt.add_argument("config", help="TOML config with [data], [model], [train]")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE")
    pt.add_argument("--out", default="runs/ancestry", help="output folder")
    pt.add_argument("--name", default="ancestry", help="model file name (NAME.safetensors)")
    pt.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice, all cores; 1 when runs share the machine)")
    pt.set_defaults(func=_cmd_train)
    return p


def error_line(exc: BaseException) -> str:
    """The message of a stitchkit error, without the worker traceback a DataLoader worker's re-raise puts in it."""
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:  # torch's ExceptionWrapper.reraise
        last = text.strip().splitlines()[-1]  # "stitchkit.core.errors.ConfigError: <the message>"
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _fail(message: str) -> int:
    from .console import error

    error(f"error: {' '.join(message.split())}")  # one line, always; rank 0 only under torchrun
    return 2


#: The status a shell reports for a process ended by SIGPIPE (128 + 13).
SIGPIPE_STATUS = 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test's capture: nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    from .console import error, rank, setup

    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 0
    setup()
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers below, not in the interpreter's exit
        return status
    except StitchkitError as exc:
        if args.traceback:
            raise
        return _fail(error_line(exc))
    except BrokenPipeError:  # the reader of stdout went away (| head): stop quietly, as SIGPIPE would
        _silence_stdout()
        return SIGPIPE_STATUS
    except OSError as exc:  # read-only or full disk, permissions, a file where a directory should be, EXDEV, EIO
        if args.traceback:
            raise
        from ..io.files import describe_os_error

        return _fail(describe_os_error(exc))
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as exc:
        if rank() == 0 or args.traceback:
            raise
        # another rank's failure (e.g. rank 0 stopped and closed the process group): one line, not a traceback
        print(f"stitchkit: rank {rank()}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
