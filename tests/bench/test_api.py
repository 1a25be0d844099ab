"""bench's public API (bench/__init__.py): every declared name resolves, and lazily."""

import importlib
import subprocess
import sys

import pytest

import bench


def test_all_lists_exactly_the_lazy_names():
    assert sorted(bench.__all__) == sorted(bench._LAZY)
    assert set(bench.__all__) <= set(dir(bench))


@pytest.mark.parametrize("name", bench.__all__)
def test_each_public_name_is_the_object_its_module_defines(name):
    module = importlib.import_module(bench._LAZY[name])
    assert getattr(bench, name) is getattr(module, name)
    assert name in module.__all__  # public where it is defined, too


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'QuantOptimiser'"):
        bench.QuantOptimiser  # noqa: B018


def test_import_bench_costs_no_torch():
    code = ("import sys, bench; before = 'torch' in sys.modules; bench.RunConfig; "
            "mid = 'torch' in sys.modules; bench.QuantOptimizer; print(before, mid, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]
