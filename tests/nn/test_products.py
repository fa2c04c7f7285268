"""fp32 products through oneDNN where chosen (nn/products.py): the same values as torch.mm."""

import pytest
import torch

from lstmkit.nn import products
from lstmkit.nn.products import mm_t, onednn_matmul_available, products_library, t_mm

needs_onednn = pytest.mark.skipif(not onednn_matmul_available(),
                                  reason="this torch has no oneDNN matmul")


@needs_onednn
@pytest.mark.parametrize("rows, inner, cols", [(1, 7, 33), (63, 24, 101), (400, 200, 1000)])
def test_onednn_products_equal_torch_mm(rows, inner, cols, monkeypatch):
    monkeypatch.setattr(products, "onednn_fp32_products", lambda: True)
    g = torch.Generator().manual_seed(rows)
    h = torch.randn(rows, inner, generator=g)
    w = torch.randn(cols, inner, generator=g)
    d = torch.randn(rows, cols, generator=g)
    for got, expected in ((mm_t(h, w), torch.mm(h, w.t())), (t_mm(d, h), torch.mm(d.t(), h))):
        assert got.shape == expected.shape
        assert ((got - expected).norm() / expected.norm()).item() < 1e-6  # summation order


@pytest.mark.parametrize("chosen", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_onednn_runs_for_fp32_where_chosen_and_nowhere_else(chosen, dtype, monkeypatch):
    calls = []
    monkeypatch.setattr(products, "onednn_fp32_products", lambda: chosen)
    monkeypatch.setattr(products, "onednn_mm_t",
                        lambda a, b: calls.append(a.shape) or torch.mm(a, b.t()))
    h, w, d = torch.ones(3, 4, dtype=dtype), torch.ones(5, 4, dtype=dtype), \
        torch.ones(3, 5, dtype=dtype)
    assert mm_t(h, w).shape == (3, 5) and t_mm(d, h).shape == (5, 4)
    assert len(calls) == (2 if chosen and dtype == torch.float32 else 0)


def test_the_run_header_names_the_library_that_runs_the_products(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(products, "onednn_fp32_products", lambda: True)
    assert products_library(cpu, "fp32").startswith("oneDNN")
    assert products_library(cpu, "bf16") == "torch.mm"
    monkeypatch.setattr(products, "onednn_fp32_products", lambda: False)
    assert products_library(cpu, "fp32") == "torch.mm"
