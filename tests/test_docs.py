"""Documentation examples run as written: every python block of the listed pages,
executed in order in one namespace."""

from __future__ import annotations

import functools
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PAGES = ["plugins.md", "snnetv2.md", "serving.md"]


def python_blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@functools.lru_cache(maxsize=None)
def run_page(page: str) -> dict:
    """Execute every python block of ``page`` in order in one namespace (once per test session)."""
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no python examples"
    namespace: dict = {"__name__": f"docs_{page.replace('.', '_')}"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - reported with the block
            raise AssertionError(f"{page}, python block {i} failed: {exc!r}\n{block}") from exc
    return namespace


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page):
    run_page(page)


def test_documented_ridge_initializer_is_ls_at_zero_and_the_closed_form_above():
    """The ridge initializer written in docs/plugins.md: bit-for-bit ``ls`` at ``lam = 0`` (also asserted
    in the page), and for ``lam > 0`` the normal-equations solution ``(A^T A + lam D) theta = A^T y`` with
    ``D = diag(1, ..., 1, 0)`` (the bias unpenalised), computed here independently."""
    import torch

    ridge = run_page("plugins.md")["Ridge"]
    g = torch.Generator().manual_seed(0)
    front = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    end = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    layer = torch.nn.Linear(4, 6)
    x, y = front.reshape(-1, 4), end.reshape(-1, 6)
    a = torch.cat([x, torch.ones(15, 1, dtype=torch.float64)], 1)
    for lam in (0.0, 0.5, 30.0):
        w, b = ridge(lam).solve(front, end, layer)
        d = torch.diag(torch.tensor([1.0] * 4 + [0.0], dtype=torch.float64))
        theta = torch.linalg.solve(a.T @ a + lam * d, a.T @ y)
        torch.testing.assert_close(w, theta[:-1].T, rtol=0, atol=1e-12)
        torch.testing.assert_close(b, theta[-1], rtol=0, atol=1e-12)
    w0, _ = ridge(0.0).solve(front, end, layer)
    w1, _ = ridge(30.0).solve(front, end, layer)
    assert w1.norm() < 0.9 * w0.norm()  # the penalty shrinks the weight


def test_the_stable_surface_listed_is_the_code():
    """docs/plugins.md's stable surface: the stitchkit.<name> list is stitchkit.__all__, and every listed module
    imports and holds the names its row gives."""
    import importlib

    import stitchkit

    text = (DOCS / "plugins.md").read_text()
    names = re.search(r"<!-- public-names -->(.*?)<!-- /public-names -->", text, flags=re.S).group(1)
    listed = set(re.findall(r"`(\w+)`", names.replace("`list_<kinds>()`", "").replace("`create_<kind>(name, *context,", "")))
    assert listed == set(stitchkit.__all__), sorted(listed ^ set(stitchkit.__all__))
    for name in stitchkit.__all__:
        getattr(stitchkit, name)
    table = re.search(r"<!-- plugin-modules -->(.*?)<!-- /plugin-modules -->", text, flags=re.S).group(1)
    rows = re.findall(r"^\| `(stitchkit[\w.]*)` \| (.*) \|$", table, flags=re.M)
    assert len(rows) == 16
    from stitchkit.core.spec import RowShape

    for module, what in rows:
        mod = importlib.import_module(module)
        for name in re.findall(r"`(\w+)`", what):  # RowShape's members are listed in its row
            assert hasattr(mod, name) or hasattr(RowShape, name), f"docs/plugins.md lists {module}.{name}, which does not exist"
