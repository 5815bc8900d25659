"""Each stack fix in zoo.compat is needed here and works; removing one makes a test fail."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo import compat
from zoo.errors import StackError

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_mmpose_apis_import_after_apply() -> None:
    """mmpose.apis imports torchvision; with a CPU torch and the registry's CUDA torchvision that
    fails unless compat declares the missing operator schemas."""
    proc = _python(
        "import zoo.compat as c; c.apply(); import mmpose.apis, mmdet.models, mmengine.runner; "
        "print('fixed' if c.torchvision_fixed() else 'native')"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in ("fixed", "native")


def test_torchvision_fix_only_when_needed() -> None:
    """The fix must apply exactly when a plain `import torchvision` fails (a CUDA machine loads the
    real extension and must not get fake schemas)."""
    plain = _python("import torchvision")
    fixed = _python("import zoo.compat as c; c.apply(); import torchvision; print(c.torchvision_fixed())")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.strip() == str(plain.returncode != 0)
    if plain.returncode != 0:
        assert "torchvision::" in plain.stderr and "does not exist" in plain.stderr


def test_torchvision_waits_for_its_first_import() -> None:
    """`apply()` does not import torchvision (its import pulls in torch._dynamo, ~1 s): the fix runs
    when something first imports it, and that import returns the one module, not a second copy."""
    proc = _python(
        "import sys, zoo.compat as c; c.apply(); c.import_models(['mmpose', 'mmdet'])\n"
        "print('torchvision' in sys.modules)\n"
        "import torchvision, torchvision.ops\n"
        "from torchvision import ops\n"
        "print(sys.modules['torchvision'] is torchvision and ops is torchvision.ops, torchvision.__spec__.origin)"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = proc.stdout.split("\n")[:2]
    assert before == "False"
    assert after.startswith("True ") and after.endswith("torchvision/__init__.py")


def test_missing_pkg_resources_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # import now raises ImportError
    monkeypatch.setattr(compat, "_applied", False)
    with pytest.raises(StackError, match="setuptools<81"):
        compat.apply()


def test_mmengine_needs_pkg_resources() -> None:
    """Why the pkg_resources check exists: mmengine resolves package paths through it."""
    proc = _python(
        "import zoo.compat as c; c.apply()\n"
        "from mmengine.utils import get_installed_path\n"
        "print(get_installed_path('mmpose'))"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("mmpose")


def _openmmlab_checkpoint() -> bytes:
    buf = io.BytesIO()
    meta = {"epoch": np.int64(210), "lr": np.array([5e-4]), "best": np.float32(0.5), "dtype": np.dtype("f4")}
    torch.save({"meta": meta, "state_dict": {"w": torch.ones(2)}}, buf)
    return buf.getvalue()


def test_checkpoint_needs_allow_list() -> None:
    """torch's default weights_only=True refuses OpenMMLab meta (numpy objects) without the list ..."""
    data = _openmmlab_checkpoint()
    with pytest.raises(Exception, match="numpy"):
        torch.load(io.BytesIO(data), weights_only=True)
    with compat.checkpoint_safe_globals():
        ckpt = torch.load(io.BytesIO(data), weights_only=True)
    assert ckpt["meta"]["epoch"] == 210
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2))


class _Payload:
    def __reduce__(self):  # what a malicious pickle would do
        return (print, ("pwned",))


def test_allow_list_still_refuses_other_globals() -> None:
    buf = io.BytesIO()
    torch.save({"meta": {"x": _Payload()}, "state_dict": {}}, buf)
    with compat.checkpoint_safe_globals(), pytest.raises(Exception, match="print"):
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


def test_no_global_weights_only_opt_out() -> None:
    """Nothing in the package turns weights_only off (it would unpickle arbitrary downloaded code)."""
    for path in (ROOT / "zoo").rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in text, path


# a fresh process's model build, as `zoo run` does it (the row's config, no weights)
_BUILD_MODEL = (
    "from pathlib import Path\n"
    "from zoo.data import dataset_paths, load_registry\n"
    "from zoo.evaluate import build_model, load_config\n"
    "from zoo.manifest import load_manifests\n"
    "row = load_manifests(Path('manifests')).row('{row}')\n"
    "cfg = load_config(row, dataset_paths(load_registry(Path('manifests')).get(row.dataset), Path('.')))\n"
    "build_model(cfg, 'cpu', None)\n"
)


def test_model_build_keeps_unneeded_packages_out(tmp_path: Path) -> None:
    """mmdet imports `transformers` when its model registry loads (CSPNeXt's backbone needs that
    registry). An installed transformers, here one whose import fails loudly, must not be imported:
    the build succeeds without touching it, and a later `import transformers` reaches it again."""
    fake = tmp_path / "site" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('transformers was imported')\n")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path / 'site')!r})\n"
        + _BUILD_MODEL.format(row="cspnext-m-udp-256x192")
        + "assert 'transformers' not in sys.modules, 'blocked import left behind'\n"
        "try:\n"
        "    import transformers\n"
        "except RuntimeError as exc:\n"
        "    print('reachable again:', exc)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "reachable again: transformers was imported"
    unguarded = _python(code.replace("build_model(cfg, 'cpu', None)", "import mmdet.models"))
    assert "transformers was imported" in unguarded.stderr  # the test's fake is really on the path


def test_model_build_skips_the_zero_optimizer_and_leaves_it_importable() -> None:
    """mmengine's model package imports torch's ZeroRedundancyOptimizer (inside try/except
    ImportError) for training only, pulling in torch.distributed's FSDP and DTensor stacks and sympy
    (~0.3 s of start-up). A model build leaves it out; importing it afterwards still works."""
    code = (
        "import sys\n"
        + _BUILD_MODEL.format(row="hrnet-w32-256x192")
        + "print('torch.distributed.optim' in sys.modules)\n"
        "from torch.distributed.optim import ZeroRedundancyOptimizer\n"
        "print(ZeroRedundancyOptimizer.__module__)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "torch.distributed.optim.zero_redundancy_optimizer"]
