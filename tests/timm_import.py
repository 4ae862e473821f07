"""timm as a parity reference: its import needs torchvision only for a frozen-BN class and
data transforms the tests never touch; where torchvision is absent (no CPU wheel matches torch
2.13.0 here), a stub that satisfies those imports is used for timm's import alone."""

import importlib.abc
import importlib.machinery
import sys
import types

import pytest


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torchvision.*`` as empty modules whose attributes are inert classes."""

    class _Meta(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return f"{cls.__name__}.{name}"

    class _Module(types.ModuleType):
        __path__: list = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _TorchvisionStub._Meta(name, (), {"__init__": lambda self, *a, **k: None})

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return self._Module(spec.name)

    def exec_module(self, module):
        pass


@pytest.fixture(scope="module")
def timm():
    torch = pytest.importorskip("torch")
    try:
        import timm
    except ModuleNotFoundError as e:
        if e.name == "timm":
            pytest.skip("timm is not installed (pip install --no-deps timm)")
        if e.name != "torchvision":
            raise
        stub = _TorchvisionStub()
        sys.meta_path.insert(0, stub)
        try:
            import timm
        finally:  # only timm's import sees the stub
            sys.meta_path.remove(stub)
            for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
                del sys.modules[name]
    except Exception as e:  # e.g. a torchvision built for another torch
        pytest.skip(f"timm cannot be imported here: {e}")
    torch.manual_seed(0)
    return timm, torch
