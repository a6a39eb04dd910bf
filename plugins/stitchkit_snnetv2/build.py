"""``stitchkit build`` for SN-Netv2: SN-Net's pipeline (anchors -> LS init -> fine-tune -> evaluate),
run from the ``[snnetv2]`` section with two-way routes, low-rank stitches and ``ros`` sampling."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from stitchkit_snnet.build import build_snnet

from .config import SNNetv2Config


def build_snnetv2(config: Mapping[str, Any], *, out_dir: pathlib.Path, registry: Any) -> pathlib.Path:
    """Run the SN-Netv2 pipeline of a resolved config; return the pool file written to ``out_dir``."""
    return build_snnet(config, out_dir=out_dir, registry=registry, name="snnetv2", config_cls=SNNetv2Config)
