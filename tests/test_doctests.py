"""The kernels' docstring examples are tests: each one runs here and must print what its docstring says."""

import doctest
import importlib

import pytest

KERNEL_MODULES = ["sada.kernels.lagrange", "sada.kernels.estimators", "sada.kernels.criterion"]


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_kernel_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    public = [getattr(module, f) for f in module.__all__]
    without = [f.__name__ for f in public if ">>> " not in (f.__doc__ or "")]
    assert result.failed == 0
    assert not without, f"{name}: public kernels without an example: {without}"
