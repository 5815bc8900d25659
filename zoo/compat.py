"""Every import-time fix the pinned stack needs, in one place, each applied only when needed.

Why each exists (facts in the README's "Stack fixes" section):
- torchvision: the registry's torchvision 0.28.0 is a CUDA build; with CPU torch its `_C` extension
  cannot load and `import torchvision` dies registering fake kernels for ops that do not exist.
  Applied at torchvision's first import: the harness's own path never imports it (~1 s saved).
- pkg_resources: mmengine imports it at run time; setuptools>=81 removed it.
- checkpoints: torch>=2.6 unpickles with weights_only=True; OpenMMLab checkpoints carry numpy
  objects in `meta`, so loading needs an explicit allow-list instead of turning weights_only off.
- start-up: mmdet imports `transformers` (for its language models, inside try/except ImportError)
  whenever its model registry loads, which CSPNeXt's backbone needs; where transformers is installed
  that import costs ~10 s (it TorchScript-compiles at import). mmengine's model package imports
  torch's ZeRO optimizer (training only, ~0.3 s). `import_models` loads the registries' packages with
  such unneeded packages kept out, so start-up does not depend on what else is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

from zoo.errors import StackError

_TORCHVISION_OPS = {
    # schema of each torchvision operator that torchvision/_meta_registrations.py needs to exist
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_lib = None  # keeps the torch.library.Library alive for the process lifetime
_applied = False


def torchvision_fixed() -> bool:
    """True when `import torchvision` needed (and got) the missing-operator fix in this process."""
    return _torchvision_lib is not None


def _import_torchvision() -> None:
    """Import torchvision; if only its CUDA extension is missing, declare the op schemas and retry."""
    global _torchvision_lib
    try:
        importlib.import_module("torchvision")
        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")  # schema only, no kernels
    for schema in _TORCHVISION_OPS.values():
        with contextlib.suppress(RuntimeError):  # already defined by a partially loaded extension
            lib.define(schema)
    _torchvision_lib = lib
    importlib.import_module("torchvision")


def _check_pkg_resources() -> None:
    """mmengine needs pkg_resources at run time; fail with the fix instead of a bare ImportError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools 80 warns that pkg_resources is deprecated
        try:
            importlib.import_module("pkg_resources")
        except ImportError as exc:
            raise StackError(
                "pkg_resources is missing (setuptools>=81 removed it) but mmengine imports it: "
                "pip install 'setuptools<81'"
            ) from exc


class _TorchvisionOnFirstImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs `_import_torchvision` when the process first imports torchvision, instead of at `apply()`.

    torchvision's import pulls in torch._dynamo (~1 s of start-up) and the harness's own path never
    needs it; mmpose's APIs and mmengine's Runner do, and get the fix the moment they ask.
    """

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        _import_torchvision()  # the real import (the module lock is re-entrant); this spec hands it on
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return sys.modules[spec.name]

    def exec_module(self, module: ModuleType) -> None:
        """Already executed by `_import_torchvision`."""


def apply() -> None:
    """Make `import mmpose.apis`, mmengine's Runner and mmdet importable on this stack. Idempotent."""
    global _applied
    if _applied:
        return
    _check_pkg_resources()
    if "torchvision" not in sys.modules:
        sys.meta_path.insert(0, _TorchvisionOnFirstImport())
    _applied = True


# Imported by OpenMMLab model packages only for what the harness never does, and only inside
# try/except ImportError: transformers for mmdet's language models (mmdet.models.language_models,
# mmdet.models.utils.vlfuse_helper, ...); torch.distributed.optim for mmengine's ZeRO optimizer
# wrapper (mmengine.optim.optimizer.zero_optimizer: training only; it pulls in torch's FSDP/DTensor
# stacks and sympy, ~0.3 s).
UNNEEDED_PACKAGES = ("transformers", "torch.distributed.optim")


@contextlib.contextmanager
def _without(packages: Iterable[str]) -> Iterator[None]:
    """`import X` raises ImportError inside the block for each X not imported yet; restored after."""
    blocked = [name for name in packages if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def import_models(scopes: Iterable[str]) -> None:
    """Load the model registries of `scopes` (`mmpose`, `mmdet`: what a config's `_scope_`s name)
    without the packages they import only for models the harness never builds."""
    apply()
    with _without(UNNEEDED_PACKAGES):
        for scope in dict.fromkeys(scopes):
            importlib.import_module(f"{scope}.models")


def checkpoint_allowed_globals() -> list:
    """The non-tensor globals OpenMMLab checkpoints legitimately pickle (numpy arrays/scalars in meta)."""
    import numpy as np

    allowed: list = [np.ndarray, np.dtype]
    for mod_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for attr in ("_reconstruct", "scalar"):
            allowed.append((getattr(mod, attr), f"{mod_name}.{attr}"))
    # dtype classes (numpy >= 1.25 pickles e.g. numpy.dtypes.Float64DType)
    dtypes = importlib.import_module("numpy.dtypes")
    allowed.extend(getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType"))
    return allowed


@contextlib.contextmanager
def checkpoint_safe_globals() -> Iterator[None]:
    """Let `torch.load(..., weights_only=True)` (torch's default) accept OpenMMLab checkpoints.

    Scoped to the `with` block, so nothing else in the process gets a wider unpickler.
    """
    import torch

    with torch.serialization.safe_globals(checkpoint_allowed_globals()):
        yield
