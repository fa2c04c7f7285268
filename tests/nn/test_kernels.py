"""Building the native kernels: a broken source or an unwritable cache falls back in one line;
with a compiler present, the shipped kernels build."""

import shutil
import warnings

import pytest

from lstmkit.errors import LstmkitWarning
from lstmkit.nn import kernels

needs_compiler = pytest.mark.skipif(not (kernels.enabled() and kernels.compiler()),
                                    reason="no C++ compiler, not Linux, or LSTMKIT_KERNELS=0")


@needs_compiler
def test_the_shipped_softmax_kernel_builds_where_a_compiler_exists():
    assert kernels.softmax_xent() is not None, kernels.build_error("softmax_xent")
    assert kernels.implementation("softmax_xent") == "native"


def _fresh_build(name, monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_errors", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = kernels.load(name)
    return module, [w for w in caught if issubclass(w.category, LstmkitWarning)]


@needs_compiler
def test_a_kernel_with_a_syntax_error_warns_in_one_line_and_falls_back(tmp_path, monkeypatch):
    source = (kernels._SOURCE_DIR / "softmax_xent.cpp").read_text()
    (tmp_path / "softmax_xent.cpp").write_text(source.replace("namespace {", "namespace {{", 1))
    for header in kernels._SOURCE_DIR.glob("*.h"):  # so the planted error is the one
        shutil.copy(header, tmp_path)
    monkeypatch.setattr(kernels, "_SOURCE_DIR", tmp_path)
    monkeypatch.setenv("LSTMKIT_CACHE", str(tmp_path / "cache"))
    module, warned = _fresh_build("softmax_xent", monkeypatch)
    assert module is None and kernels.implementation("softmax_xent") == "fallback"
    assert len(warned) == 1 and "\n" not in str(warned[0].message)
    assert "error" in kernels.build_error("softmax_xent")


@needs_compiler
def test_an_unwritable_cache_warns_and_falls_back_instead_of_failing(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("LSTMKIT_CACHE", str(blocker))
    module, warned = _fresh_build("softmax_xent", monkeypatch)
    assert module is None and len(warned) == 1
    assert "unavailable" in str(warned[0].message)


def test_without_a_compiler_there_is_no_build_and_no_warning(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    module, warned = _fresh_build("softmax_xent", monkeypatch)
    assert module is None and warned == []


def test_the_isa_line_names_what_the_cpu_offers():
    isa = kernels.cpu_isa()
    assert isa and "\n" not in isa
