"""`zoo diff A B`: what differs between two runs, from their result records.

Records come from real `zoo run`s of one row on the synthetic set (its own config, GT boxes, batch
size 1) and from editing a record's JSON the way another machine, mmpose version or checkpoint
would have written it; every difference must be named with both values.
"""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo.cli import main
from zoo.results import write_json

ROOT = Path(__file__).resolve().parents[1]
ROW = "res50-256x192"
OTHER_ROW = "hrnet-w32-256x192"


@pytest.fixture(scope="module")
def runs(local_zoo, data_roots, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Results folders of one row run three ways: as configured (det boxes), --boxes gt, --batch-size 1."""
    manifests = local_zoo(ROW)
    base = tmp_path_factory.mktemp("diff-runs")
    data = data_roots["coco-wholebody-v1.0-val"]
    common = ["--manifests", str(manifests), "--data-root", str(data), "--cache", str(base / "cache"),
              "--workers", "0", "--device", "cpu", "--no-progress"]  # fmt: skip
    out = {}
    for name, extra in (("det", []), ("gt", ["--boxes", "gt"]), ("bs1", ["--batch-size", "1"])):
        out[name] = base / name
        assert main(["run", ROW, *common, "--out", str(out[name]), *extra]) == 0
    return out


def _diff(capsys, *args: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["diff", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _record(folder: Path, row: str = ROW) -> dict[str, Any]:
    return json.loads((folder / row / "result.json").read_text())


def _write(folder: Path, record: dict[str, Any]) -> Path:
    """As `zoo run` writes records (sorted keys)."""
    path = folder / record["row_id"] / "result.json"
    write_json(path, record)
    return path


def _line(text: str, field: str) -> str:
    """The markdown table line naming `field`."""
    (line,) = [
        ln for ln in text.splitlines() if ln.count("|") >= 5 and ln.split("|")[2].strip() == f"`{field}`"
    ]
    return line


def _by_field(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["field"]: d for d in row["differences"]}


@pytest.mark.slow
def test_detector_vs_gt_boxes(runs, capsys) -> None:
    code, out, err = _diff(capsys, runs["det"], runs["gt"])
    assert code == 0 and err == ""
    assert f"## {ROW}" in out and "rows compared: 1" in out
    assert "| wholebody |" in out and "| part | AP |" in out
    assert "| data | `box_source` | `det` | `gt` |" in out
    det_sha = _record(runs["det"])["fingerprint"]["data"]["det_sha256"]
    assert det_sha and f"| `fingerprint.data.det_sha256` | `{det_sha}` | `null` |" in out
    assert "--boxes gt" in _line(out, "command")
    assert "fingerprint.boxes" not in out  # mirrors box_source with the same change
    assert "fingerprint_digest" not in out and "config_sha256" not in out  # digests of what is compared
    assert "`timings." not in out and "`started`" not in out and "Speed (not a difference): total" in out

    code, out, _ = _diff(capsys, runs["det"], runs["gt"], "--json")
    doc = json.loads(out)
    assert code == 0 and doc["only_a"] == doc["only_b"] == [] and list(doc["rows"]) == [ROW]
    row = doc["rows"][ROW]
    assert row["same_row"] is True and row["a"]["status"] == row["b"]["status"] == "ok"
    fields = _by_field(row)
    assert fields["box_source"] == {"field": "box_source", "section": "data", "a": "det", "b": "gt"}
    assert fields["fingerprint.data.det_sha256"]["b"] is None
    assert set(row["metrics"]) == {"body", "foot", "face", "lefthand", "righthand", "hand", "wholebody"}
    for part in row["metrics"].values():
        assert len(part) == 10 and set(part["AP"]) == {"a", "b", "delta"}


@pytest.mark.slow
def test_batch_size_and_identical_metrics(runs, capsys) -> None:
    a, b = runs["det"] / ROW / "result.json", runs["bs1"] / ROW / "result.json"
    code, out, _ = _diff(capsys, a, b)
    assert code == 0
    assert _line(out, "config.test_dataloader.batch_size").endswith("| `32` | `1` |")
    assert _line(out, "inference.batch_size").endswith("| `32` | `1` |")
    assert "--batch-size 1" in _line(out, "command")
    metrics_table = out.split("**What differs**")[0]  # the per-keypoint table has a body line too
    metric_lines = [
        ln for ln in metrics_table.splitlines() if ln.startswith("| wholebody |") or ln.startswith("| body |")
    ]
    assert len(metric_lines) == 2 and not any("→" in ln for ln in metric_lines)  # same predictions
    assert "box_source" not in out and "checkpoint.sha256" not in out


@pytest.mark.slow
def test_every_edited_field_is_named_with_both_values(runs, capsys, tmp_path: Path) -> None:
    """Another xtcocotools, another config, another checkpoint, other metrics: each named."""
    a = _record(runs["det"])
    a["metrics"]["wholebody"].update(AP=0.5, APm=0.45, AR=0.6)
    b = copy.deepcopy(a)
    b["environment"]["packages"]["xtcocotools"]["version"] = "1.13.0"
    b["environment"]["python"] = "3.12.3"
    b["environment"]["packages"]["xtcocotools"]["path"] = "/elsewhere/xtcocotools"
    b["config"]["model"]["head"]["decoder"]["sigma"] = 3
    b["config"]["model"]["test_cfg"]["flip_test"] = False
    b["config"]["codec"]["input_size"] = [288, 384]
    b["checkpoint"] = {"sha256": "ab" * 32, "url": "https://example.org/other-abababab.pth"}
    b["fingerprint"]["checkpoint_sha256"] = "ab" * 32
    b["fingerprint"]["subset"] = 100
    b["metrics"]["wholebody"].update(AP=0.53, APm=0.48)
    b["timings"]["total_s"] = 1234.5
    pa, pb = _write(tmp_path / "a", a), _write(tmp_path / "b", b)

    code, out, _ = _diff(capsys, pa, pb)
    assert code == 0
    expected = {
        "environment.packages.xtcocotools.version": ("`1.14.3`", "`1.13.0`"),
        "environment.python": (f"`{a['environment']['python']}`", "`3.12.3`"),
        "config.model.head.decoder.sigma": ("`2`", "`3`"),
        "config.model.test_cfg.flip_test": ("`true`", "`false`"),
        "config.codec.input_size": ("`[192, 256]`", "`[288, 384]`"),
        "checkpoint.sha256": (f"`{a['checkpoint']['sha256']}`", f"`{'ab' * 32}`"),
        "checkpoint.url": (f"`{a['checkpoint']['url']}`", "`https://example.org/other-abababab.pth`"),
        "fingerprint.subset": (f"`{json.dumps(a['fingerprint']['subset'])}`", "`100`"),
    }
    for field, (va, vb) in expected.items():
        assert _line(out, field).endswith(f"| {va} | {vb} |"), field
    # left out: the fingerprint's copy of the checkpoint hash, install paths, clocks
    assert "fingerprint.checkpoint_sha256" not in out and ".path`" not in out and "`timings." not in out
    assert "Speed (not a difference): total" in out and "1234.50 s" in out
    whole = next(ln for ln in out.splitlines() if ln.startswith("| wholebody |"))
    header = next(ln for ln in out.splitlines() if ln.startswith("| part |"))
    assert header == "| part | AP | APm | AR |"  # AP and AR always, APm because it moved
    assert whole == "| wholebody | 0.5000 → 0.5300 (+0.0300) | 0.4500 → 0.4800 (+0.0300) | 0.6000 |"
    sections = [ln.split("|")[1].strip() for ln in out.splitlines() if ln.startswith("| ") and "| `" in ln]
    named = [s for s in sections if s]
    assert named == sorted(set(named), key=named.index)  # each section's name once, grouped
    assert (
        named.index("checkpoint") < named.index("data") < named.index("config") < named.index("environment")
    )

    code, out, _ = _diff(capsys, pa, pb, "--json")
    row = json.loads(out)["rows"][ROW]
    fields = _by_field(row)
    assert fields["environment.packages.xtcocotools.version"]["section"] == "environment"
    assert fields["config.codec.input_size"] == {
        "field": "config.codec.input_size", "section": "config", "a": [192, 256], "b": [288, 384]
    }  # fmt: skip
    assert row["metrics"]["wholebody"]["AP"] == {"a": 0.5, "b": 0.53, "delta": pytest.approx(0.03)}
    assert row["metrics"]["face"]["AP"]["delta"] is None  # -1 on the synthetic set: undefined
    assert row["speed"]["total_s"]["b"] == 1234.5

    code, out, _ = _diff(capsys, pa, pb, "--all-fields")
    assert _line(out, "timings.total_s").endswith("| `1234.5` |")
    assert _line(out, "environment.packages.xtcocotools.path").endswith("| `/elsewhere/xtcocotools` |")


def test_the_same_checkpoint_from_another_url_is_not_a_difference(runs, capsys, tmp_path: Path) -> None:
    """Same sha256 from a mirror (or the demo's loopback server on another port): not listed unless
    --all-fields; the same URL with other bytes stays a difference (previous test)."""
    a = _record(runs["det"])
    b = copy.deepcopy(a)
    b["checkpoint"]["url"] = "https://mirror.example.org/" + a["checkpoint"]["url"].rsplit("/", 1)[1]
    pa, pb = _write(tmp_path / "a", a), _write(tmp_path / "b", b)
    code, out, _ = _diff(capsys, pa, pb)
    assert code == 0 and "checkpoint.url" not in out
    code, out, _ = _diff(capsys, pa, pb, "--all-fields")
    assert _line(out, "checkpoint.url").endswith(f"| `{b['checkpoint']['url']}` |")


@pytest.mark.slow
def test_folders_match_rows_and_list_the_rest(runs, capsys, tmp_path: Path) -> None:
    record = _record(runs["det"])
    other = dict(record, row_id=OTHER_ROW, name="HRNet-w32")
    left, right = tmp_path / "left", tmp_path / "right"
    _write(left, record)
    _write(right, _record(runs["gt"]))
    _write(right, other)
    code, out, _ = _diff(capsys, left, right)
    assert code == 0 and "rows compared: 1; only in B: `hrnet-w32-256x192`" in out
    assert f"## {ROW}" in out and f"## {OTHER_ROW}" not in out
    code, out, _ = _diff(capsys, right, left, "--json")
    doc = json.loads(out)
    assert doc["only_a"] == [OTHER_ROW] and doc["only_b"] == [] and list(doc["rows"]) == [ROW]
    # a row folder is one record, compared with the other side whatever its row
    code, out, _ = _diff(capsys, left / ROW, right / OTHER_ROW)
    assert code == 0 and f"## {ROW} vs {OTHER_ROW}" in out and "**Different rows**" in out
    assert _line(out, "row_id").endswith(f"| `{ROW}` | `{OTHER_ROW}` |")
    assert "fingerprint.row.id" not in out  # the fingerprint's copy of row_id
    doc = json.loads(_diff(capsys, left / ROW, right / OTHER_ROW, "--json")[1])
    assert doc["rows"][f"{ROW} vs {OTHER_ROW}"]["same_row"] is False


@pytest.mark.slow
def test_failed_run_shows_status_and_error(runs, capsys, tmp_path: Path) -> None:
    ok = _record(runs["det"])
    failed = {k: v for k, v in ok.items() if k not in ("metrics", "fingerprint", "fingerprint_digest")}
    failed.update(status="error", error="CUDA out of memory at batch size 1")
    code, out, _ = _diff(capsys, _write(tmp_path / "a", ok), _write(tmp_path / "b", failed))
    assert code == 0 and "No metrics to compare: A is ok, B is error." in out
    assert _line(out, "status").endswith("| `ok` | `error` |")
    assert _line(out, "error").endswith("| *(absent)* | `CUDA out of memory at batch size 1` |")


def _per_keypoint(capsys, tmp_path: Path, ann_file: Path, shift: float) -> dict[str, Any]:
    """`zoo eval --per-keypoint --json` of predictions copied from the ground truth, the left hand
    moved right by `shift` x the box's longer side."""
    gt = json.loads(ann_file.read_text())
    preds = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd"):
            continue
        fields = {
            f: list(ann[f])
            for f in ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")
        }
        hand = np.reshape(fields["lefthand_kpts"], (-1, 3))
        hand[:, 0] += shift * max(ann["bbox"][2:])
        fields["lefthand_kpts"] = hand.ravel().tolist()
        for name, values in fields.items():
            kp = np.reshape(values, (-1, 3))
            kp[:, 2] = 0.9
            fields[name] = kp.ravel().tolist()
        preds.append({"image_id": ann["image_id"], "category_id": 1, "score": 0.8, **fields})
    path = tmp_path / f"preds-{shift}.json.gz"
    path.write_bytes(gzip.compress(json.dumps(preds).encode()))
    capsys.readouterr()
    assert main(["eval", "--preds", str(path), "--ann", str(ann_file), "--per-keypoint", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_per_keypoint_deltas_and_plot(runs, data_roots, capsys, tmp_path: Path) -> None:
    from zoo.data import dataset_paths, load_registry

    ann = dataset_paths(
        load_registry(ROOT / "manifests").get("coco-wholebody-v1.0-val"),
        data_roots["coco-wholebody-v1.0-val"],
    ).ann_file
    a, b = _record(runs["det"]), _record(runs["det"])
    a["per_keypoint"] = _per_keypoint(capsys, tmp_path, ann, 0.0)
    b["per_keypoint"] = _per_keypoint(capsys, tmp_path, ann, 0.02)
    pa, pb = _write(tmp_path / "a", a), _write(tmp_path / "b", b)
    plot = tmp_path / "plots" / "delta.png"

    code, out, err = _diff(capsys, pa, pb, "--plot", plot)
    assert code == 0 and err == ""
    assert "Per keypoint (matched pairs:" in out and "`per_keypoint" not in out
    left = next(ln for ln in out.splitlines() if ln.startswith("| left hand |"))
    body = next(ln for ln in out.splitlines() if ln.startswith("| body |") and "1.000" in ln)
    assert "1.000 → " in left and "(−0." in left and "→" not in body.split("|")[3]
    worst = next(ln for ln in out.splitlines() if ln.startswith("Worst 5 keypoints by Δ OKS:"))
    assert worst.count("(left hand)") == 5
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"`{plot}`" in out

    # several rows with per-keypoint numbers: one plot per row beside the named file
    for record, folder in ((a, "a"), (b, "b")):
        _write(tmp_path / folder, dict(record, row_id=OTHER_ROW))
    code, out, _ = _diff(capsys, tmp_path / "a", tmp_path / "b", "--plot", tmp_path / "many.png")
    assert code == 0 and sorted(p.name for p in tmp_path.glob("many*")) == [
        f"many-{OTHER_ROW}.png", f"many-{ROW}.png"
    ]  # fmt: skip

    doc = json.loads(_diff(capsys, pa, pb, "--json")[1])
    kd = doc["rows"][ROW]["per_keypoint"]
    assert [w["part"] for w in kd["worst"]] == ["lefthand"] * 5
    assert kd["parts"]["lefthand"]["oks"]["delta"] < 0 == kd["parts"]["body"]["oks"]["delta"]

    # an old record without per-keypoint numbers: nothing said about them, and nothing to plot
    del b["per_keypoint"]
    _write(tmp_path / "b", b)
    code, out, _ = _diff(capsys, pa, pb)
    assert code == 0 and "Per keypoint" not in out and "`per_keypoint" not in out
    code, out, err = _diff(capsys, pa, pb, "--plot", tmp_path / "other.png")
    assert code == 2 and out == "" and not (tmp_path / "other.png").exists()
    assert err.count("\n") == 1 and "--plot" in err and "per_keypoint" in err

    b["per_keypoint"] = dict(a["per_keypoint"], oks="bad")
    _write(tmp_path / "b", b)
    code, out, err = _diff(capsys, pa, pb)
    assert code == 2 and out == "" and f"{pb}: per_keypoint.oks" in err and err.count("\n") == 1


@pytest.mark.slow
def test_out_writes_the_same_text(runs, capsys, tmp_path: Path) -> None:
    target = tmp_path / "diff" / "det-vs-gt.md"
    _, printed, _ = _diff(capsys, runs["det"], runs["gt"])
    code, out, _ = _diff(capsys, runs["det"], runs["gt"], "--out", target)
    assert code == 0 and out.strip() == str(target) and target.read_text() == printed
    code, out, err = _diff(capsys, runs["det"], runs["gt"], "--out", tmp_path)
    assert code == 2 and out == "" and err.startswith(f"zoo: error: --out {tmp_path}: cannot write there")


def _zoo_diff(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo", "diff", *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    good = tmp_path / "good" / ROW / "result.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps({"schema": 2, "row_id": ROW, "status": "skipped", "reason": "no data"}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": 2, "row_id": ')
    no_status = tmp_path / "no-status.json"
    no_status.write_text(json.dumps({"schema": 2, "row_id": ROW}))
    odd_status = tmp_path / "odd-status.json"  # the status is a closed set
    odd_status.write_text(json.dumps({"schema": 2, "row_id": ROW, "status": "passed"}))
    bad_metrics = tmp_path / "bad-metrics.json"
    bad_metrics.write_text(json.dumps({"schema": 2, "row_id": ROW, "status": "ok", "metrics": [1]}))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        tmp_path / "missing.json": "not found",
        broken: "not valid JSON",
        no_status: "lacks field 'status'",
        odd_status: "field 'status' is 'passed' (ok, error or skipped)",
        bad_metrics: "field 'metrics'",
        empty: "no result records",
    }
    for path, needle in cases.items():
        for args in ((good, path), (path, good.parent.parent)):
            proc = _zoo_diff(*args)
            assert proc.returncode == 2 and proc.stdout == "", (path, proc.stderr)
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"zoo: error: {path}")
            assert needle in proc.stderr, proc.stderr
    # two skipped records are fine: nothing measured, the differences still listed
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": 2, "row_id": ROW, "status": "skipped", "reason": "no images",
                                 "missing": ["val2017/"]}))  # fmt: skip
    proc = _zoo_diff(good, other)
    assert proc.returncode == 0, proc.stderr
    assert "No metrics to compare: A is skipped, B is skipped." in proc.stdout
    assert "| `reason` | `no data` | `no images` |" in proc.stdout
    assert '| `missing` | `[]` | `["val2017/"]` |' in proc.stdout
