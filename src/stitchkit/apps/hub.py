"""``stitchkit export POOL DESCENDANT --hf DIR``: one descendant as a timm / Hugging Face model folder.

Why: a folder of ``config.json``, ``model.safetensors`` and ``README.md`` is what
``timm.create_model("local-dir:DIR", pretrained=True)`` loads, and what
``huggingface_hub.upload_folder`` shares so that ``hf-hub:ORG/NAME`` loads it
back. A single-row descendant is written as its timm model (timm needs no
stitchkit to run it); a stitched one as a stitchkit descendant file that
``stitchkit.load_exported(DIR)`` reads. The folder appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from typing import Any

from ..core.errors import FileError, PoolFormatError
from ..core.spec import Path
from ..io import hub, storage
from ..io.files import refuse_overwrite
from ..io.header import DESCENDANT_FORMAT, PLAIN_FORMAT, _read_header, file_kind, read_pool_metadata
from ..pool.pool import Pool
from ..pool.sizes import pool_sizes
from .cards import descendant_card
from .report import stored_sizes


def _replaceable(out: pathlib.Path) -> None:
    """``out`` may be replaced only if it is absent, an empty folder, or an earlier export folder."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise FileError(f"{out}: --hf needs a folder, and this is a file; give a new folder name")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in hub.FOLDER_FILES)
    if foreign:
        raise FileError(f"{out}: the folder holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, "
                        f"not only an earlier export ({', '.join(hub.FOLDER_FILES)}); give a new or empty folder")


def _usable_data(p: pathlib.Path, data: Any) -> dict[str, Any]:
    """The pool's ``info.data``, if its preprocessing and classes have the types timm's config needs."""
    pre, classes = (data.get("preprocessing"), data.get("classes")) if isinstance(data, dict) else (None, None)
    ok = isinstance(data, dict) and (pre is None or isinstance(pre, dict)) and (
        classes is None or isinstance(classes, list) and all(isinstance(c, str) for c in classes))
    if not ok:
        raise PoolFormatError(p, "metadata info.data must hold a preprocessing object and a list of class names")
    return data


def _sizes(pool_or_path: Pool | os.PathLike[str] | str, index: int) -> tuple[int | None, int | None]:
    """Params and MACs of descendant ``index``, as the pool file stores them (computed for an in-memory pool)."""
    if isinstance(pool_or_path, Pool):
        entry = pool_sizes(pool_or_path)["descendants"][index]
    else:
        entry = stored_sizes(read_pool_metadata(pool_or_path), path=pool_or_path)["descendants"][index]
    return int(entry["params"]), int(entry["macs"])


def export_hf(pool_or_path: Pool | os.PathLike[str] | str, key: Path | int | str, out_dir: os.PathLike[str] | str,
              *, registry: Any = None) -> dict[str, Any]:
    """Write descendant ``key`` as a model folder; return its ``config.json`` content.

    Single-row: ``model.safetensors`` holds the row's own timm keys and ``config.json``
    the timm architecture, model arguments and ``pretrained_cfg`` (preprocessing,
    classes), so ``timm.create_model("local-dir:DIR", pretrained=True)`` rebuilds it.
    Stitched: ``model.safetensors`` is a descendant file and ``config.json`` carries its
    path and rows. Both load with ``stitchkit.load_exported(DIR)``; ``README.md`` is
    the model card (:mod:`stitchkit.apps.cards`).
    """
    out = pathlib.Path(out_dir)
    _replaceable(out)
    if not isinstance(pool_or_path, Pool):
        for name in hub.FOLDER_FILES:  # the folder replaces these: none may be the pool itself
            refuse_overwrite(out / name, [pool_or_path], "--hf output")
        source = storage._PoolFile(pool_or_path)
        target = source.resolve(key)
        index = [p.name for p in source.paths].index(target.name)
    else:
        target = pool_or_path.path(key)
        index = pool_or_path.paths.index(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir()
        weights = tmp / hub.WEIGHTS
        if target.is_single_row:
            storage.export_timm_state_dict(pool_or_path, target, weights, registry=registry)
        else:
            storage.export_descendant(pool_or_path, target, weights, registry=registry)
        h = _read_header(weights)
        meta = h.metadata or {}
        kind = file_kind(meta)
        desc = json.loads(meta["stitchkit_descendant"] if kind == PLAIN_FORMAT else meta["descendant"])
        data = _usable_data(weights, (desc.get("info") or {}).get("data") or {})
        params, macs = _sizes(pool_or_path, index)
        provenance = {"kind": kind, "descendant": desc["name"], "path": desc["path"], "method": desc["method"],
                      "rows": [{k: r[k] for k in ("row", "adapter", "arch")} for r in desc["rows"]],
                      "format_version": meta["format_version"], "params": params, "macs": macs}
        if kind == PLAIN_FORMAT:
            row = desc["rows"][0]
            config = hub.timm_folder_config(row["adapter"], row["arch"], data.get("preprocessing"), data.get("classes"),
                                             width=row["width"], stitchkit=provenance)
            architecture = config["architecture"]
        else:
            assert kind == DESCENDANT_FORMAT
            config = hub.descendant_folder_config(data.get("preprocessing"), data.get("classes"), stitchkit=provenance)
            architecture = None
        (tmp / hub.CONFIG).write_bytes(hub.dumps(config))
        card = descendant_card(desc, params=params, macs=macs, folder_name=out.name, timm_architecture=architecture,
                               meta={"format_version": meta["format_version"], "writer": meta.get("writer"),
                                     "metadata_sha256": meta.get("metadata_sha256")})
        (tmp / hub.CARD).write_text(card, encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _swap_in(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and any(str(f).startswith(str(tmp)) for f in (exc.filename, exc.filename2) if f):
            raise OSError(exc.errno, exc.strerror, str(out)) from None  # the user named the folder, not our temp one
        raise
    return config


def _swap_in(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Put the finished folder at ``out``: renamed in whole; an earlier export there is removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
