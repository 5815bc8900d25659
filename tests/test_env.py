"""`zoo env` reports the stack and fails loudly, with the reason, when something required is broken."""

from __future__ import annotations

import json

import pytest

from zoo import env as zoo_env
from zoo.cli import main


def test_env_json_reports_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == []
    for name in ("torch", "torchvision", "mmcv", "mmengine", "mmpose", "mmdet", "xtcocotools", "numpy"):
        assert report["packages"][name]["version"], name
    assert report["packages"]["mmpose"]["version"] == "1.3.2"
    assert report["mmcv_ops"]["loaded"] is True
    assert "cuda_available" in report["device"]
    assert report["dirs"]["cache"]


def test_doctor_alias_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "mmcv ops" in out and "loaded" in out and "cache dir" in out


def test_broken_package_is_a_named_failure(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    real = zoo_env._probe_package

    def probe(name: str) -> dict:
        return {"version": None, "error": "ImportError: simulated"} if name == "xtcocotools" else real(name)

    monkeypatch.setattr(zoo_env, "_probe_package", probe)
    assert main(["env"]) == 3
    err = capsys.readouterr().err
    assert "xtcocotools does not import: ImportError: simulated" in err


def test_missing_compiled_mmcv_ops_is_explained(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(
        zoo_env, "_probe_mmcv_ops", lambda: {"loaded": False, "error": "No module named 'mmcv._ext'"}
    )
    assert main(["env"]) == 3
    assert "not mmcv-lite" in capsys.readouterr().err
