"""The manifests load, carry the published rows exactly, and every malformed one fails with one precise line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zoo.cli import main
from zoo.errors import InputError, StackError
from zoo.manifest import METRICS, Band, load_manifests

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MINIMAL = FIXTURES / "minimal-manifest" / "table.yaml"
BAD = FIXTURES / "bad-manifests"
BAD_CASES = yaml.safe_load((BAD / "expected-errors.yaml").read_text())

ROW_ORDER = [
    "hrnet-w48-dark-plus-384x288", "hrnet-w32-dark-256x192", "hrnet-w48-256x192", "cspnext-m-udp-256x192",
    "hrnet-w32-ubody-coco-256x192", "res152-256x192", "hrnet-w32-256x192", "res101-256x192",
    "vipnas-res50-dark-256x192", "res50-256x192", "vipnas-res50-256x192", "hrnet-w32-ubody2d-256x192",
]  # fmt: skip


@pytest.fixture(scope="module")
def manifests():
    return load_manifests(MANIFESTS)


def test_project_manifests_hold_the_twelve_rows_in_published_order(manifests):
    assert [t.id for t in manifests.tables] == ["coco-wholebody", "ubody2d"]
    assert [r.id for r in manifests.rows] == ROW_ORDER
    assert [len(t.rows) for t in manifests.tables] == [11, 1]
    for row in manifests.rows:
        assert row.checkpoint.sha256_prefix in row.checkpoint.filename
        assert row.config_path.is_file()
        assert row.table in ("coco-wholebody", "ubody2d")


def test_rows_carry_the_published_values_and_quirks(manifests):
    dark_plus = manifests.row("hrnet-w48-dark-plus-384x288")
    assert dark_plus.name == "HRNet-w48+Dark+"
    assert dark_plus.input_size == (384, 288)
    assert dark_plus.expected.flat() == dict(
        zip(METRICS, [0.742, 0.807, 0.707, 0.806, 0.841, 0.892, 0.602, 0.694, 0.661, 0.743], strict=True)
    )
    assert any("17" in n and "11" in n for n in dark_plus.notes)

    cspnext = manifests.row("cspnext-m-udp-256x192")
    assert (cspnext.boxes, cspnext.expected.get("hand.ar")) == ("gt", 0.543)

    ubody = manifests.row("hrnet-w32-ubody2d-256x192")
    assert ubody.config == "zoo::ubody2d/td-hm_hrnet-w32_8xb64-210e_ubody2d-val-256x192.py"
    assert (ubody.boxes, ubody.use_area, ubody.dataset) == ("gt", False, "ubody2d-val")
    assert [k for k, v in ubody.expected.flat().items() if v is not None] == ["whole.ap", "whole.ar"]
    assert ubody.checkpoint == manifests.row("hrnet-w32-ubody-coco-256x192").checkpoint


def test_tolerance_defaults_come_from_the_table_and_rows_override_them(manifests):
    assert manifests.row("res50-256x192").tolerance.for_metric("whole.ap") == Band(0.005, "both")
    assert manifests.row("hrnet-w48-dark-plus-384x288").tolerance.for_metric("hand.ar") == Band(0.01, "both")
    assert manifests.row("hrnet-w32-ubody2d-256x192").tolerance.for_metric("whole.ar") == Band(0.01, "both")


def _write(tmp_path: Path, text: str, name: str = "table.yaml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_per_metric_one_sided_tolerance_merges_with_defaults(tmp_path):
    text = MINIMAL.read_text().replace(
        "    expected:\n",
        "    tolerance:\n      metrics:\n        whole.ar: {direction: lower}\n        whole.ap: {abs: 0.02}\n    expected:\n",
    )
    row = load_manifests(_write(tmp_path, text)).row("res50-256x192")
    assert row.tolerance.for_metric("whole.ar") == Band(0.005, "lower")
    assert row.tolerance.for_metric("whole.ap") == Band(0.02, "both")
    assert row.tolerance.for_metric("hand.ap") == Band(0.005, "both")


def test_yaml_merge_keys_and_a_valid_full_sha256_are_accepted(tmp_path):
    digest = "9e37ed88" + "ab" * 28
    text = MINIMAL.read_text().replace(
        "      sha256_prefix: 9e37ed88\n", f"      sha256_prefix: 9e37ed88\n      sha256: '{digest}'\n"
    )
    text = text.replace("    expected:\n      whole: {ap: 0.521, ar: 0.633}\n",
                        "    expected:\n      whole: &w {ap: 0.521, ar: 0.633}\n      body:\n        <<: *w\n        ar: 0.7\n")  # fmt: skip
    row = load_manifests(_write(tmp_path, text)).row("res50-256x192")
    assert row.checkpoint.sha256 == digest
    assert (row.expected.get("body.ap"), row.expected.get("body.ar")) == (0.521, 0.7)


def test_unknown_row_id_names_close_matches(manifests):
    with pytest.raises(
        InputError, match=r"unknown row id 'hrnet-w32-256x191' \(did you mean: hrnet-w32-256x192"
    ):
        manifests.row("hrnet-w32-256x191")


def test_the_bad_corpus_is_big_enough():
    cases = sorted(p.name for p in BAD.iterdir() if p.is_dir())
    assert cases == sorted(BAD_CASES)
    assert len(cases) >= 20


def test_minimal_manifest_is_valid(tmp_path):
    """The corpus cases are this file plus one defect each, so this must load."""
    m = load_manifests(_write(tmp_path, MINIMAL.read_text()))
    assert [r.id for r in m.rows] == ["res50-256x192"]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_malformed_manifest_fails_with_its_own_one_line_error(case):
    with pytest.raises(InputError) as caught:
        load_manifests(BAD / case)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "\n" not in message
    assert message.startswith(str(BAD / case) + "/")
    assert BAD_CASES[case] in message


def test_dataset_ids_are_checked_against_the_registry_when_present(tmp_path):
    _write(tmp_path, MINIMAL.read_text())
    _write(tmp_path, "datasets:\n  coco-wholebody-v1.0-val:\n    files: []\n", "datasets.yaml")
    assert load_manifests(tmp_path).tables[0].dataset == "coco-wholebody-v1.0-val"


def test_missing_or_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="manifest folder does not exist"):
        load_manifests(tmp_path / "nope")
    _write(tmp_path, "datasets: {}\n", "datasets.yaml")
    with pytest.raises(InputError, match="no table manifests"):
        load_manifests(tmp_path)


def test_mmpose_configs_need_mmpose_installed(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(StackError, match="mmpose is not installed"):
        load_manifests(_write(tmp_path, MINIMAL.read_text()))


def test_cli_validate_and_list(capsys):
    assert main(["validate"]) == 0
    assert "2 tables, 12 rows (coco-wholebody: 11, ubody2d: 1) valid" in capsys.readouterr().out
    assert main(["list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ROW_ORDER
    assert rows[0]["expected"]["whole"] == {"ap": 0.661, "ar": 0.743}
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "cspnext-m-udp-256x192" in out and "0.690" in out


def test_cli_reports_a_bad_manifest_in_one_line_with_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("ZOO_MANIFESTS", str(BAD / "sha-prefix-mismatch"))
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and BAD_CASES["sha-prefix-mismatch"] in err


def test_manifests_option_overrides_the_default(tmp_path, capsys):
    _write(tmp_path, MINIMAL.read_text())
    assert main(["list", "--format", "json", "--manifests", str(tmp_path)]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["res50-256x192"]
