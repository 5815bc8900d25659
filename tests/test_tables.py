"""The manifests regenerate mmpose's published tables byte for byte, and the layout holds for measured values."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.cli import main
from zoo.manifest import Metrics, PartMetrics, load_manifests
from zoo.tables import expected_values, render_expected, render_section, render_table

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = (Path(__file__).resolve().parent / "fixtures" / "seed-tables.md").read_text(encoding="utf-8")
COCO_SECTION, UBODY_SECTION = FIXTURE.split("\n### ")
UBODY_SECTION = "### " + UBODY_SECTION


@pytest.fixture(scope="module")
def manifests():
    return load_manifests(ROOT / "manifests")


def test_expected_tables_equal_the_published_text(manifests):
    assert render_expected(manifests.tables) == FIXTURE


def test_cli_table_expected_is_byte_identical(capsys):
    assert main(["table", "--expected"]) == 0
    assert capsys.readouterr().out == FIXTURE
    assert main(["table", "--expected", "--table", "ubody2d"]) == 0
    assert capsys.readouterr().out == UBODY_SECTION
    assert main(["table", "--expected", "--table", "coco-wholebody"]) == 0
    assert capsys.readouterr().out == COCO_SECTION


def test_cli_table_unknown_name_is_an_input_error(capsys):
    assert main(["table", "--expected", "--table", "ubody"]) == 2
    assert "unknown table 'ubody' (did you mean: ubody2d?)" in capsys.readouterr().err


def test_measured_values_replace_expected_and_missing_rows_stay(manifests):
    table = manifests.table("coco-wholebody")
    values = expected_values(table)
    values["hrnet-w48-dark-plus-384x288"] = {"whole.ap": 0.6604, "whole.ar": 0.74351}
    del values["res50-256x192"]  # e.g. a run that failed
    text = render_table(table, values, missing="n/a")
    lines = text.splitlines()
    assert len(lines) == 2 + 11
    assert len({len(line) for line in lines}) == 1  # every line padded to the same widths
    assert "|  0.660   |  0.744   |" in lines[2]
    res50 = next(line for line in lines if "ResNet-50 " in line)
    assert res50.count("n/a") == 2
    assert render_section(table, values).startswith("### COCO-WholeBody Dataset\n\nResults on COCO-WholeBody")


def test_a_wider_cell_widens_its_column_and_odd_padding_goes_right(manifests):
    table = manifests.table("ubody2d")
    text = render_table(
        table, {"hrnet-w32-ubody2d-256x192": {"whole.ap": None, "whole.ar": 0.7}}, missing="missing"
    )
    header, separator, row = text.splitlines()
    assert header.startswith("|   Model   | Input Size | Whole AP | Whole AR |")
    assert separator.startswith("| :-------: | :--------: | :------: | :------: |")
    assert "| missing  |" in row  # 7 chars centred in 8: the extra space goes right
    assert "|  0.700   |" in row


def test_published_values_win_over_rebaselined_expected(manifests):
    table = manifests.table("ubody2d")
    row = table.rows[0]
    moved = row.model_copy(
        update={"expected": Metrics(whole=PartMetrics(ap=0.7, ar=0.74)), "published": row.expected}
    )
    rebaselined = table.model_copy(update={"rows": [moved]})
    assert render_section(rebaselined, expected_values(rebaselined)) == UBODY_SECTION
