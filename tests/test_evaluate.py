"""`zoo run` end to end on synthetic data with random-weight checkpoints of the real architectures.

Fidelity: predictions and metrics equal mmpose's own `Runner.from_cfg(cfg).test()` path.
Robustness: resume after SIGKILL, atomic files, torchrun sharding, CUDA-OOM back-off.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zoo.manifest import load_manifests

ROOT = Path(__file__).resolve().parents[1]
ALL_ROWS = [row.id for row in load_manifests(ROOT / "manifests").rows]
STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
pytestmark = pytest.mark.slow


def _opts(tmp_path: Path, data_root: Path, **kw):
    from zoo.evaluate import RunOptions

    return RunOptions(
        data_root=data_root, out=tmp_path / "runs", cache=tmp_path / "cache", workers=0, progress=False, **kw
    )


def _zoo(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "zoo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("row_id", ALL_ROWS)
def test_every_row_runs_end_to_end(row_id: str, local_zoo, data_roots, tmp_path: Path) -> None:
    from zoo.evaluate import run_row

    manifests = load_manifests(local_zoo(row_id))
    row = manifests.row(row_id)
    record = run_row(row, manifests, _opts(tmp_path, data_roots[row.dataset], subset=2))
    assert record["status"] == "ok" and record["row_id"] == row_id
    for part in ("body", "foot", "face", "lefthand", "righthand", "wholebody"):
        assert set(record["metrics"][part]) == set(STATS)
    assert set(record["metrics"]["hand"]) >= {"AP", "AR"}
    assert record["inference"]["crops"] > 0
    assert record["checkpoint"]["sha256"].startswith(row.checkpoint.sha256_prefix)
    assert record["environment"]["packages"]["mmpose"]["version"] == "1.3.2"
    assert {"model_build_s", "inference_s", "evaluation_s", "total_s"} <= set(record["timings"])
    on_disk = json.loads((tmp_path / "runs" / row_id / "result.json").read_text())
    assert on_disk["fingerprint_digest"] == record["fingerprint_digest"]
    preds = json.loads(gzip.decompress((tmp_path / "runs" / row_id / "predictions.json.gz").read_bytes()))
    assert len(preds) == record["counts"]["predictions"]
    for p in preds:
        assert len(p["keypoints"]) == 51 and len(p["face_kpts"]) == 204 and len(p["lefthand_kpts"]) == 63
    assert len({p["image_id"] for p in preds}) <= 2


@pytest.mark.parametrize(
    "row_id", ["hrnet-w32-dark-256x192", "cspnext-m-udp-256x192", "vipnas-res50-256x192"]
)
def test_matches_mmpose_runner(row_id: str, local_zoo, data_roots, tmp_path: Path) -> None:
    """Same predictions (<= 1e-4 px) and the same whole-body metrics as mmpose's own test loop."""
    from zoo import fetch
    from zoo.data import dataset_paths, load_boxes, load_registry
    from zoo.evaluate import build_dataset, build_model, infer, load_config, reference_run, run_row

    manifests = load_manifests(local_zoo(row_id))
    row = manifests.row(row_id)
    opts = _opts(tmp_path, data_roots[row.dataset])
    record = run_row(row, manifests, opts)

    paths = dataset_paths(load_registry(manifests.dir).get(row.dataset), data_roots[row.dataset])
    cfg = load_config(row, paths, load_boxes(row.boxes, paths), workers=0)
    ckpt = fetch.fetch_row(row, lock=fetch.ChecksumLock(manifests.dir / "checkpoints.lock"), cache=opts.cache)
    state = fetch.load_checkpoint(ckpt, cache=opts.cache)
    ref_pairs, ref_scores = reference_run(cfg, state, tmp_path / "ref")
    ds = build_dataset(cfg)
    ours, _ = infer(
        build_model(cfg, "cpu", state),
        ds,
        range(len(ds)),
        batch_size=cfg.test_dataloader.batch_size,
        workers=0,
        device="cpu",
        progress=False,
    )
    ref = dict(ref_pairs)
    assert sorted(ref) == sorted(i for i, _ in ours) and ref
    for sample_id, inst in ours:
        assert np.abs(inst.keypoints - ref[sample_id].keypoints).max() <= 1e-4
        assert np.abs(inst.keypoint_scores - ref[sample_id].keypoint_scores).max() <= 1e-6
    whole = record["metrics"]["wholebody"]
    assert whole["AP"] == pytest.approx(ref_scores["coco-wholebody/AP"], abs=1e-12)
    assert whole["AR"] == pytest.approx(ref_scores["coco-wholebody/AR"], abs=1e-12)
    assert whole["AP50"] == pytest.approx(ref_scores["coco-wholebody/AP .5"], abs=1e-12)


def test_resume_skips_finished_rows_and_reuses_predictions(local_zoo, data_roots, tmp_path: Path) -> None:
    from zoo.evaluate import run_row

    manifests = load_manifests(local_zoo("res50-256x192"))
    row = manifests.row("res50-256x192")
    opts = _opts(tmp_path, data_roots[row.dataset])
    first = run_row(row, manifests, opts)
    record_file = tmp_path / "runs" / row.id / "result.json"
    stamp = record_file.stat().st_mtime_ns
    again = run_row(row, manifests, opts)
    assert again["finished"] == first["finished"] and record_file.stat().st_mtime_ns == stamp  # skipped
    record_file.unlink()  # as if killed after the predictions were written
    resumed = run_row(row, manifests, opts)
    assert resumed["resumed_from_predictions"] is True and resumed["inference"] is None
    assert resumed["metrics"] == first["metrics"]
    opts.force = True
    forced = run_row(row, manifests, opts)
    assert forced["resumed_from_predictions"] is False and forced["metrics"] == first["metrics"]
    opts.force, opts.subset = False, 1  # a different fingerprint is not "finished"
    assert run_row(row, manifests, opts)["fingerprint_digest"] != first["fingerprint_digest"]


def _assert_whole_files(runs: Path) -> None:
    for path in runs.rglob("result.json"):
        json.loads(path.read_text())
    for path in runs.rglob("predictions.json.gz"):
        json.loads(gzip.decompress(path.read_bytes()))


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_mid_row_and_between_rows(local_zoo, data_roots, tmp_path: Path) -> None:
    rows = ("res50-256x192", "vipnas-res50-256x192")
    mdir = local_zoo(*rows)
    runs = tmp_path / "runs"
    args = [
        "run",
        *rows,
        "--manifests",
        str(mdir),
        "--data-root",
        str(data_roots["coco-wholebody-v1.0-val"]),
        "--out",
        str(runs),
        "--cache",
        str(tmp_path / "cache"),
        "--workers",
        "0",
        "--no-progress",
    ]

    # killed between rows: the first row's record exists, the second row has not finished
    proc = _zoo(*args)
    _wait_for(proc, lambda: (runs / rows[0] / "result.json").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_whole_files(runs)
    first = json.loads((runs / rows[0] / "result.json").read_text())
    assert not (runs / rows[1] / "result.json").exists()

    # killed mid-row (while the second row builds its dataset/model)
    proc = _zoo(*args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = proc.stdout
    line = out.readline()  # first row is reported as up to date before the second one starts
    assert line.startswith(rows[0]), line
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_whole_files(runs)
    assert not (runs / rows[1] / "result.json").exists()

    proc = _zoo(*args)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"{rows[0]}: up to date" in stderr
    assert json.loads((runs / rows[0] / "result.json").read_text())["finished"] == first["finished"]
    second = json.loads((runs / rows[1] / "result.json").read_text())
    assert second["status"] == "ok"
    _assert_whole_files(runs)


def test_torchrun_two_processes_match_one(local_zoo, data_roots, tmp_path: Path) -> None:
    row_id = "vipnas-res50-256x192"
    mdir = local_zoo(row_id)
    common = [
        "run",
        row_id,
        "--manifests",
        str(mdir),
        "--data-root",
        str(data_roots["coco-wholebody-v1.0-val"]),
        "--cache",
        str(tmp_path / "cache"),
        "--workers",
        "0",
        "--no-progress",
        "--batch-size",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in both runs, so numbers can be equal
    launchers = {
        "one": [sys.executable, "-m", "zoo"],
        "two": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "zoo",
        ],
    }
    for out, launcher in launchers.items():
        proc = subprocess.run(
            [*launcher, *common, "--out", str(tmp_path / out)],
            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / row_id / "result.json").read_text())
    two = json.loads((tmp_path / "two" / row_id / "result.json").read_text())
    assert two["inference"]["world_size"] == 2
    assert two["metrics"] == one["metrics"]
    p1 = gzip.decompress((tmp_path / "one" / row_id / "predictions.json.gz").read_bytes())
    p2 = gzip.decompress((tmp_path / "two" / row_id / "predictions.json.gz").read_bytes())
    assert p1 == p2  # the same predictions, in the same order


def test_cuda_oom_halves_batch_and_keeps_results(local_zoo, data_roots) -> None:
    import torch

    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import build_dataset, build_model, infer, load_config

    manifests = load_manifests(ROOT / "manifests")
    row = manifests.row("vipnas-res50-256x192")
    paths = dataset_paths(load_registry(manifests.dir).get(row.dataset), data_roots[row.dataset])
    cfg = load_config(row, paths, workers=0)
    torch.manual_seed(0)
    model = build_model(cfg, "cpu", None)
    ds = build_dataset(cfg)
    baseline, _ = infer(model, ds, range(len(ds)), batch_size=8, workers=0, device="cpu", progress=False)
    real_step = model.test_step

    def tight_memory(batch):
        if len(batch["inputs"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(batch)

    model.test_step = tight_memory
    pairs, stats = infer(model, ds, range(len(ds)), batch_size=8, workers=0, device="cpu", progress=False)
    assert stats.batch_size == 2 and len(stats.oom_retries) == 2
    assert [i for i, _ in pairs] == [i for i, _ in baseline]
    for (_, a), (_, b) in zip(pairs, baseline, strict=False):
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)


def test_reference_paths_give_identical_results(local_zoo, data_roots, tmp_path: Path) -> None:
    """`zoo run --reference` (mmpose's per-box pipeline + xtcocotools) == the default fast paths."""
    from zoo.evaluate import run_row

    manifests = load_manifests(local_zoo("hrnet-w32-dark-256x192"))
    row = manifests.row("hrnet-w32-dark-256x192")
    fast = run_row(row, manifests, _opts(tmp_path / "fast", data_roots[row.dataset]))
    ref = run_row(row, manifests, _opts(tmp_path / "ref", data_roots[row.dataset], reference=True))
    assert ref["fingerprint"]["paths"] == "reference" and fast["fingerprint"]["paths"] == "fast"
    assert ref["metrics"] == fast["metrics"]
    read = lambda d: (d / "runs" / row.id / "predictions.json.gz").read_bytes()  # noqa: E731
    assert read(tmp_path / "ref") == read(tmp_path / "fast")
