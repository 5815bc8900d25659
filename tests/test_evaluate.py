"""`zoo run` end to end on synthetic data with random-weight checkpoints of the real architectures.

Fidelity: predictions and metrics equal mmpose's own `Runner.from_cfg(cfg).test()` path.
Robustness: resume after SIGKILL, atomic files, torchrun sharding, CUDA-OOM back-off.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from zoo.keypoints import KeypointStats
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
    assert record.status == "ok" and record.row_id == row_id
    for part in ("body", "foot", "face", "lefthand", "righthand", "wholebody"):
        assert set(record.metrics[part]) == set(STATS)
    assert set(record.metrics["hand"]) >= {"AP", "AR"}
    assert record.inference["crops"] > 0 and record.subset == 2 and record.synthetic
    assert record.checkpoint_sha256.startswith(row.checkpoint.sha256_prefix)
    assert record.environment["packages"]["mmpose"]["version"] == "1.3.2"
    assert record.environment["dirs"]["cache"] == str(tmp_path / "cache")  # the cache this run used
    assert {"model_build_s", "inference_s", "evaluation_s", "per_keypoint_s", "total_s"} <= set(
        record.timings
    )
    per_keypoint = record.details["per_keypoint"]  # where a regression sits: all 133 keypoints, by part
    assert len(KeypointStats.from_json(per_keypoint, row_id).values("oks")) == 133
    on_disk = json.loads((tmp_path / "runs" / row_id / "result.json").read_text())
    assert on_disk == record.to_json() and on_disk["config"]["test_dataloader"]["batch_size"] == 32
    preds = json.loads(gzip.decompress((tmp_path / "runs" / row_id / "predictions.json.gz").read_bytes()))
    assert len(preds) == record.details["counts"]["predictions"]
    for p in preds:
        assert len(p["keypoints"]) == 51 and len(p["face_kpts"]) == 204 and len(p["lefthand_kpts"]) == 63
    assert len({p["image_id"] for p in preds}) <= 2


def _fast_instances(cfg, state, ds, *, batch_size: int | None = None, model=None):
    """The fast path's per-box instances for every sample of `ds` (one row alone in a pass)."""
    from zoo.evaluate import build_model
    from zoo.inference import Decoder, HeatmapModel, RowPass, run_pass

    model = HeatmapModel(model or build_model(cfg, "cpu", state), ds.metainfo["flip_indices"])
    row = RowPass("row", model, Decoder(model.codec, "row"), batch_size or cfg.test_dataloader.batch_size)
    out, _ = run_pass(ds, list(range(len(ds))), [row], device="cpu", workers=0, progress=False)
    return out["row"], row


def _same_instances(a, b) -> None:
    """Bitwise equal per-box predictions (any order: compared by sample id)."""
    a, b = a.take(np.argsort(a.sample_id)), b.take(np.argsort(b.sample_id))
    for name in ("sample_id", "image_id", "keypoints", "keypoint_scores", "bbox_score", "area"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


@pytest.mark.parametrize(
    "row_id", ["hrnet-w32-dark-256x192", "cspnext-m-udp-256x192", "vipnas-res50-256x192"]
)
def test_matches_mmpose_runner(row_id: str, local_zoo, data_roots, tmp_path: Path) -> None:
    """Bitwise the per-box predictions and exactly the whole-body metrics of mmpose's own test loop."""
    from zoo import fetch
    from zoo.data import dataset_paths, load_boxes, load_registry
    from zoo.evaluate import build_dataset, load_config, reference_run, run_row

    manifests = load_manifests(local_zoo(row_id))
    row = manifests.row(row_id)
    opts = _opts(tmp_path, data_roots[row.dataset])
    record = run_row(row, manifests, opts)

    paths = dataset_paths(load_registry(manifests.dir).get(row.dataset), data_roots[row.dataset])
    cfg = load_config(row, paths, load_boxes(row.boxes, paths), workers=0)
    ckpt = fetch.fetch_row(row, lock=fetch.ChecksumLock(manifests.dir / "checkpoints.lock"), cache=opts.cache)
    state = fetch.load_checkpoint(ckpt, cache=opts.cache)
    ref, ref_scores = reference_run(cfg, state, tmp_path / "ref")
    ours, _ = _fast_instances(cfg, state, build_dataset(cfg))
    assert len(ref) == len(ours) > 0
    _same_instances(ours, ref)
    whole = record.metrics["wholebody"]
    assert whole["AP"] == ref_scores["coco-wholebody/AP"]
    assert whole["AR"] == ref_scores["coco-wholebody/AR"]
    assert whole["AP50"] == ref_scores["coco-wholebody/AP .5"]


def test_table_mode_equals_each_row_alone(local_zoo, data_roots, tmp_path: Path) -> None:
    """Rows with the same crops share one pass; each row's predictions are byte-identical to running
    it alone and its record differs only in the volatile fields (clocks, command, the shared pass)."""
    from zoo.evaluate import run_rows
    from zoo.results import comparable

    rows = ("res50-256x192", "vipnas-res50-dark-256x192", "hrnet-w32-256x192", "cspnext-m-udp-256x192")
    manifests = load_manifests(local_zoo(*rows))
    root = data_roots["coco-wholebody-v1.0-val"]

    def opts(name: str):  # one cache for all: the record names the cache it used
        return replace(_opts(tmp_path / name, root), cache=tmp_path / "cache")

    table = run_rows(manifests.rows, manifests, opts("table"))
    by_id = {r.row_id: r for r in table}
    assert set(by_id) == set(rows) and all(r.status == "ok" for r in table)
    assert sorted(by_id["res50-256x192"].inference["shared_pass"]) == sorted(rows[1:3])
    assert by_id["cspnext-m-udp-256x192"].inference["shared_pass"] == []  # UDP crops and GT boxes: its own
    for row_id in rows:
        run_rows([manifests.row(row_id)], manifests, opts(row_id))
        table_dir, alone_dir = tmp_path / "table" / "runs" / row_id, tmp_path / row_id / "runs" / row_id
        assert (table_dir / "predictions.json.gz").read_bytes() == (
            alone_dir / "predictions.json.gz"
        ).read_bytes()
        table_record, alone_record = (
            json.loads((d / "result.json").read_text()) for d in (table_dir, alone_dir)
        )
        assert comparable(table_record) == comparable(alone_record), row_id


def test_resume_skips_finished_rows_and_reuses_predictions(local_zoo, data_roots, tmp_path: Path) -> None:
    from zoo.evaluate import run_row

    manifests = load_manifests(local_zoo("res50-256x192"))
    row = manifests.row("res50-256x192")
    opts = _opts(tmp_path, data_roots[row.dataset])
    first = run_row(row, manifests, opts)
    record_file = tmp_path / "runs" / row.id / "result.json"
    stamp = record_file.stat().st_mtime_ns
    again = run_row(row, manifests, opts)
    assert again.details["finished"] == first.details["finished"] and record_file.stat().st_mtime_ns == stamp
    record_file.unlink()  # as if killed after the predictions were written
    resumed = run_row(row, manifests, opts)
    assert resumed.details["resumed_from_predictions"] is True and resumed.details["inference"] is None
    assert resumed.metrics == first.metrics
    opts.force = True
    forced = run_row(row, manifests, opts)
    assert forced.details["resumed_from_predictions"] is False and forced.metrics == first.metrics
    opts.force, opts.subset = False, 1  # a different fingerprint is not "finished"
    assert run_row(row, manifests, opts).fingerprint_digest != first.fingerprint_digest


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


@pytest.fixture(scope="module")
def busy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 images with ~5 detector boxes each: a run of a few dozen batches, long enough to kill."""
    from zoo.data import SynthSpec, synthesize

    return synthesize(
        tmp_path_factory.mktemp("busy"), n_images=10, seed=4, spec=SynthSpec(fp_per_image=3)
    ).root


def test_sigkill_at_random_points_resumes_to_identical_predictions(
    local_zoo, busy_root, tmp_path: Path
) -> None:
    """Two rows sharing a pass, killed at random moments (imports, model build, mid-pass, while
    writing), rerun each time: every file on disk is always whole, the rerun resumes from the last
    checkpointed chunk, and the final predictions are byte-identical to an uninterrupted run."""
    import random

    rows = ("res50-256x192", "vipnas-res50-256x192")
    mdir = local_zoo(*rows)

    def args(out: Path) -> list[str]:
        return [
            "run", *rows, "--manifests", str(mdir), "--data-root", str(busy_root), "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--workers", "0", "--no-progress", "--batch-size", "2",
            "--checkpoint-every", "0",
        ]  # fmt: skip

    started = time.monotonic()
    reference = subprocess.run(
        [sys.executable, "-m", "zoo", *args(tmp_path / "ref")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    whole = time.monotonic() - started
    runs = tmp_path / "runs"

    def kill(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("30 s after the SIGKILL its output is still open: a child process outlived it")
        _assert_whole_files(runs)

    rng = random.Random(20261204)
    # Kill moments as fractions of an uninterrupted run, so they land inside a run on any machine. A
    # rerun resumes and so is shorter than the whole run: once one finishes before its kill, it is the
    # completing run. Where the kills land (imports, build, pass, writing) depends on the machine's
    # pace, so what the completing run must resume is read from the disk it starts on.
    kills, finished = 0, False
    for fraction in sorted(rng.uniform(0.3, 0.75) for _ in range(4)):
        left = _resumable(runs, rows)
        proc = _zoo(*args(runs))
        try:
            _, stderr = proc.communicate(timeout=fraction * whole)
        except subprocess.TimeoutExpired:
            kill(proc)
            kills += 1
        else:
            finished = True
            break
    assert kills >= 1, f"the first run finished before {0.3 * whole:.1f} s, under a third of the reference's"
    if not finished:
        committed = all((runs / row_id / "predictions.done.json").exists() for row_id in rows)
        if not committed and not _resumable(runs, rows):  # the kills missed the pass: kill after a chunk
            proc = _zoo(*args(runs))
            _wait_for(proc, lambda: _resumable(runs, rows))
            kill(proc)
            assert _resumable(runs, rows), "a run killed after writing a chunk must leave it resumable"
        left = _resumable(runs, rows)
        proc = _zoo(*args(runs))
        _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    resumed = {line.split(":")[0] for line in _checkpointed_resumes(stderr)}
    assert resumed == set(left), f"left chunks for {sorted(left)}, resumed {sorted(resumed)}"
    for row_id in rows:
        ours = (runs / row_id / "predictions.json.gz").read_bytes()
        assert ours == (tmp_path / "ref" / row_id / "predictions.json.gz").read_bytes(), row_id
        record = json.loads((runs / row_id / "result.json").read_text())
        want = json.loads((tmp_path / "ref" / row_id / "result.json").read_text())
        assert record["metrics"] == want["metrics"]
        assert not list((runs / row_id).glob("partial-*")), "chunks are removed once the predictions exist"


def _resumable(runs: Path, rows: tuple[str, ...]) -> list[str]:
    """The rows a rerun must resume from checkpointed chunks: an index listing a chunk, and no
    committed predictions (a row whose predictions are committed is only re-evaluated)."""
    out = []
    for row_id in rows:
        if (runs / row_id / "predictions.done.json").exists():
            continue
        for index in (runs / row_id).glob("partial-*/index.json"):
            try:
                chunks = json.loads(index.read_text())["chunks"]
            except (OSError, ValueError):  # mid-replace: not resumable yet
                continue
            if chunks:
                out.append(row_id)
                break
    return out


def _checkpointed_resumes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "resuming at box" in line]


def test_killed_mid_pass_resumes_at_its_last_chunk(local_zoo, busy_root, tmp_path: Path) -> None:
    """Killed once chunks exist: the rerun says where it resumes and does not redo those boxes."""
    rows = ("res50-256x192",)
    mdir = local_zoo(*rows)
    runs = tmp_path / "runs"
    common = [
        "run", *rows, "--manifests", str(mdir), "--data-root", str(busy_root), "--out", str(runs),
        "--cache", str(tmp_path / "cache"), "--workers", "0", "--no-progress", "--batch-size", "2",
        "--checkpoint-every", "0",
    ]  # fmt: skip
    proc = _zoo(*common)
    _wait_for(proc, lambda: len(list((runs / rows[0]).glob("partial-*/chunk-*.npz"))) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _assert_whole_files(runs)
    proc = _zoo(*common)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    (line,) = _checkpointed_resumes(stderr)
    assert int(line.split("resuming at box ")[1].split()[0]) >= 6
    record = json.loads((runs / rows[0] / "result.json").read_text())
    assert record["inference"]["resumed_at"] >= 6


def test_ctrl_c_keeps_the_decoded_batches(local_zoo, busy_root, tmp_path: Path) -> None:
    """SIGINT mid-pass: exit 130, the batches decoded so far are written as a chunk (even with no
    periodic checkpoint due), and the rerun resumes after them."""
    mdir = local_zoo("res50-256x192")
    runs = tmp_path / "runs"

    def args(out: Path) -> list[str]:
        return [
            "run", "res50-256x192", "--manifests", str(mdir), "--data-root", str(busy_root), "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--workers", "0", "--no-progress", "--batch-size", "2",
            "--checkpoint-every", "100000",
        ]  # fmt: skip

    def start(out: Path) -> tuple[subprocess.Popen, float]:
        """A run and the moment its pass began."""
        proc = _zoo(*args(out))
        started = time.monotonic()
        while "boxes on cpu" not in (line := proc.stderr.readline()):
            assert line or proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() - started < 300
        return proc, time.monotonic()

    # The interrupt lands halfway through the pass as an uninterrupted run times it on this machine; a
    # run that finished first (the timing run was slowed by a busy machine) is repeated with an earlier one.
    proc, began = start(tmp_path / "timing")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    pass_s = time.monotonic() - began
    for fraction in (0.5, 0.25, 0.1):
        shutil.rmtree(runs, ignore_errors=True)
        proc, began = start(runs)
        time.sleep(max(0.0, began + fraction * pass_s - time.monotonic()))
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
        if proc.returncode != 0:
            break
    assert proc.returncode == 130, stderr[-3000:]
    assert "zoo: interrupted" in stderr and not (runs / "res50-256x192" / "result.json").exists()
    assert list((runs / "res50-256x192").glob("partial-*/chunk-*.npz"))
    proc = _zoo(*args(runs))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    (line,) = _checkpointed_resumes(stderr)
    assert int(line.split("resuming at box ")[1].split()[0]) >= 2


def test_decode_processes_as_on_a_gpu_host_give_the_same_bytes(local_zoo, busy_root, tmp_path: Path) -> None:
    """A GPU host's configuration (decode workers >= POOL_MIN_WORKERS: DARK and UDP in a DecodePool,
    MSRA in the threads, many batches in flight) writes byte-identical predictions to one decode
    thread, in table mode; and a SIGKILLed run's decode processes leave with it (its pipes close)."""
    from zoo.inference import POOL_MIN_WORKERS

    rows = ("res50-256x192", "vipnas-res50-dark-256x192", "cspnext-m-udp-256x192")  # MSRA, DARK, UDP
    mdir = local_zoo(*rows)

    def args(out: Path, decode_workers: int) -> list[str]:
        return [
            "run", *rows, "--manifests", str(mdir), "--data-root", str(busy_root), "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--workers", "0", "--no-progress", "--batch-size", "3",
            "--decode-workers", str(decode_workers),
        ]  # fmt: skip

    records = {}
    for name, n in (("threads", 1), ("pool", POOL_MIN_WORKERS)):
        proc = _zoo(*args(tmp_path / name, n))
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        records[name] = {r: json.loads((tmp_path / name / r / "result.json").read_text()) for r in rows}
    for row_id in rows:
        pooled = records["pool"][row_id]["inference"]
        assert (
            pooled["decode_workers"] == POOL_MIN_WORKERS
            and records["threads"][row_id]["inference"]["decode_processes"] is False
        )
        assert pooled["decode_processes"] is (row_id != "res50-256x192"), row_id  # MSRA stays in threads
        assert (tmp_path / "pool" / row_id / "predictions.json.gz").read_bytes() == (
            tmp_path / "threads" / row_id / "predictions.json.gz"
        ).read_bytes(), row_id
        assert records["pool"][row_id]["metrics"] == records["threads"][row_id]["metrics"]
    warm = records["pool"]["vipnas-res50-dark-256x192"]["inference"]
    assert 0 < warm["warm_crops_per_s"] < float("inf")  # the pass warmed up and says at what pace
    # more batches than the pass keeps in flight (2 per decode worker + 2): back-pressure was exercised
    assert records["pool"]["vipnas-res50-dark-256x192"]["inference"]["crops"] > 3 * (2 * POOL_MIN_WORKERS + 2)

    proc = _zoo(*args(tmp_path / "killed", POOL_MIN_WORKERS))
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    _wait_for(proc, lambda: len(children.read_text().split()) >= POOL_MIN_WORKERS)  # the pool has forked
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # returns only once every process holding its stdout/stderr is gone


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
    from zoo.evaluate import build_dataset, build_model, load_config

    manifests = load_manifests(ROOT / "manifests")
    row = manifests.row("vipnas-res50-256x192")
    paths = dataset_paths(load_registry(manifests.dir).get(row.dataset), data_roots[row.dataset])
    cfg = load_config(row, paths, workers=0)
    torch.manual_seed(0)
    model = build_model(cfg, "cpu", None)
    ds = build_dataset(cfg)
    baseline, _ = _fast_instances(cfg, None, ds, batch_size=8, model=model)
    real_forward = model.extract_feat

    def tight_memory(x):
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(x)

    model.extract_feat = tight_memory
    instances, row_pass = _fast_instances(cfg, None, ds, batch_size=8, model=model)
    assert len(ds) > 2 and row_pass.batch_size == 2
    assert row_pass.oom_retries and all("CUDA OOM at batch size" in r for r in row_pass.oom_retries)
    assert instances.sample_id.tolist() == baseline.sample_id.tolist()
    np.testing.assert_allclose(instances.keypoints, baseline.keypoints, atol=1e-4)


def test_reference_paths_give_identical_results(local_zoo, data_roots, tmp_path: Path) -> None:
    """`zoo run --reference` (mmpose's per-box pipeline + xtcocotools) == the default fast paths."""
    from zoo.evaluate import run_row

    manifests = load_manifests(local_zoo("hrnet-w32-dark-256x192"))
    row = manifests.row("hrnet-w32-dark-256x192")
    fast = run_row(row, manifests, _opts(tmp_path / "fast", data_roots[row.dataset]))
    ref = run_row(row, manifests, _opts(tmp_path / "ref", data_roots[row.dataset], reference=True))
    assert ref.fingerprint["paths"] == "reference" and fast.fingerprint["paths"] == "fast"
    assert ref.metrics == fast.metrics
    read = lambda d: (d / "runs" / row.id / "predictions.json.gz").read_bytes()  # noqa: E731
    assert read(tmp_path / "ref") == read(tmp_path / "fast")


def test_boxes_det_gt_keeps_both_records_gates_the_own_and_reports_the_difference(
    local_zoo, data_roots, tmp_path: Path, capsys
) -> None:
    """`zoo run ROW --boxes det,gt`: the row's own (detector) record where the gate looks, the GT-box
    record beside it; `zoo check` judges only the own one; `zoo report` shows per part what the boxes
    change."""
    from zoo.cli import main
    from zoo.results import box_variant_dir, read_record

    row = "res50-256x192"
    mdir = local_zoo(row)
    runs = tmp_path / "runs"
    common = ["--manifests", str(mdir)]
    assert main([
        "run", row, *common, "--cache", str(tmp_path / "cache"), "--data-root", str(data_roots["coco-wholebody-v1.0-val"]), "--out", str(runs),
        "--workers", "0", "--no-progress", "--boxes", "det,gt",
    ]) == 0  # fmt: skip
    own = read_record(runs / row / "result.json")
    gt = read_record(box_variant_dir(runs, "gt") / row / "result.json")
    assert (own.box_source, gt.box_source) == ("det", "gt") and own.status == gt.status == "ok"
    # different boxes went in: the synthetic detector file has false positives the GT does not
    assert own.inference["crops"] > gt.inference["crops"] > 0
    assert own.fingerprint["data"]["det_sha256"] and gt.fingerprint["data"]["det_sha256"] is None
    capsys.readouterr()
    main(["check", row, *common, "--results", str(runs)])
    gate = capsys.readouterr().out
    # judged once, on its own (detector-box) record: random weights FAIL, but not STALE for its boxes
    lines = [line.split() for line in gate.splitlines() if row in line.split()]
    assert len(lines) == 1 and lines[0][:2] == ["FAIL", row] and "STALE" not in gate, gate
    assert main(["report", row, *common, "--results", str(runs), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "coco-wholebody.md").read_text(encoding="utf-8")
    assert "## Box source" in text
    whole = next(line for line in text.splitlines() if "det → gt" in line and "Whole AP" in line)
    cells = [c.strip() for c in whole.strip("|").split("|")]
    delta = gt.metric("whole.ap") - own.metric("whole.ap")
    assert cells[3:6] == [f"{own.metric('whole.ap'):.4f}", f"{gt.metric('whole.ap'):.4f}", f"{delta:+.4f}"]
