"""P3: `zoo run` vs mmpose's `Runner.from_cfg(cfg).test()` on one CUDA device, and the whole table.

What is compared, per benchmarked row (the same synthetic data, checkpoint, device, batch size and
data workers; every path its own process):
  runner       `Runner.from_cfg(cfg).test()` with the row's config (as `reference_run` builds it):
               its loop (mmpose's per-box pipeline, `test_step`, the metric's per-box processing)
               and, separately, its metric;
  zoo          `zoo run ROW --device cuda` as a user runs it (a second time with --cuda-graphs);
  model-bound  the forward pass and flip test alone (`zoo.inference.HeatmapModel`) on a batch already
               on the GPU, at the same batch size: the pace the hardware allows.
boxes/s is boxes over the loop's wall time from its first batch on (zoo: `inference.crops_per_s` of
the record; runner: its test loop without the metric; neither counts the data workers' start-up).
The predictions must be identical: zoo's results records equal the ones mmpose's metric writes, and
its whole-body stats equal the Runner's.
Beside zoo's pace from its first batch, its warm pace (`inference.warm_crops_per_s`: once the one-time
costs are paid) is set against the model-bound one, which is timed warm too.

The whole table: `zoo run --table coco-wholebody` (with `--cuda-graphs` on a GPU, checked byte-identical
to the eager runs above) on the same data, timed in one process, and
extrapolated to full scale (5,000 images, ~104k detector boxes per row): the one-time costs
(start-up, model builds, data workers starting) as measured, each pass's steady part scaled by
104,125 / measured boxes, plus each row's post-processing and evaluation measured at full scale on
synthetic predictions.

Order, for a machine lent for minutes (`--budget`): every row's zoo run, Runner.test and model-bound
pace, then the whole table, then the CUDA-graph mode per row; the files are rewritten after each step,
and a step that cannot start within the budget is named in the results instead of run.

    python -m benchmarks.gpu_speed                                   # on the machine's GPU
    python -m benchmarks.gpu_speed --device cpu --images 2 --rows res50-256x192   # a dry run
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common

MODULE = "benchmarks.gpu_speed"
CSV_NAME = "gpu_speed.csv"
MD_NAME = "gpu_speed.md"
PACKAGES = ("torch", "numpy", "opencv-python", "opencv-python-headless", "mmpose", "mmcv", "mmengine")
MANIFESTS = _common.ROOT / "manifests"
ROWS = ("hrnet-w48-dark-plus-384x288", "cspnext-m-udp-256x192", "hrnet-w32-256x192")
TABLE = "coco-wholebody"
FULL_BOXES = 104125  # the detector boxes of the published COCO-WholeBody rows


def _zoo(args: Sequence[str], timeout: float) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        cwd=_common.ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"zoo {' '.join(args[:3])} ... failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}"
        )
    return time.perf_counter() - t, proc.stderr


# --------------------------------------------------------------------------------------------------
# workers (each in its own process)


def _row_config(mdir: Path, row_id: str, root: Path, workers: int) -> tuple[Any, Any, Any]:
    from zoo import compat, fetch
    from zoo.data import dataset_paths, load_boxes, load_registry
    from zoo.evaluate import load_config
    from zoo.manifest import load_manifests

    compat.apply()
    manifests = load_manifests(mdir)
    row = manifests.row(row_id)
    paths = dataset_paths(load_registry(mdir).get(row.dataset), root)
    cfg = load_config(row, paths, load_boxes(row.boxes, paths), workers=workers)
    return row, cfg, fetch.fetch_row(row, lock=fetch.ChecksumLock(mdir / "checkpoints.lock"), offline=True)


def runner_worker(
    mdir: Path, row_id: str, root: Path, workers: int, device: str, work: Path
) -> dict[str, Any]:
    """mmpose's own test: Runner.from_cfg(cfg).test(), its loop timed apart from its metric."""
    import contextlib

    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from zoo import fetch
    from zoo.evaluate import load_weights

    row, cfg, ckpt = _row_config(mdir, row_id, root, workers)
    state = fetch.load_checkpoint(ckpt)
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = str(work)
    cfg.load_from = None
    cfg.launcher = "none"
    cfg.test_evaluator.outfile_prefix = str(work / "mmpose")  # its results records, to compare with zoo's
    marks: dict[str, float] = {}

    class Clock(Hook):  # from the first batch on, as zoo's crops_per_s (not the workers' start-up)
        def before_test_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
            marks.setdefault("start", time.perf_counter())

        def after_test_iter(
            self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
        ) -> None:
            marks["loop_end"] = time.perf_counter()

    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        runner = Runner.from_cfg(cfg)
        runner.register_hook(Clock(), priority="LOWEST")
        load_weights(runner.model, state, cfg.filename)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        scores = runner.test()
        test_s = time.perf_counter() - t
    return {
        "build_s": build_s,
        "test_s": test_s,
        "loop_s": marks["loop_end"] - marks["start"],
        "boxes": len(runner.test_dataloader.dataset),
        "scores": {k: float(v) for k, v in scores.items()},
        "records_file": str(work / "mmpose.keypoints.json"),
    }


def model_bound_worker(
    mdir: Path, row_id: str, root: Path, device: str, batch: int, seconds: float, graphs: bool
) -> dict[str, Any]:
    """boxes/s of the forward pass + flip test alone, on one batch of real crops kept on the GPU."""
    import torch

    from zoo import fetch
    from zoo.crops import chunk_loader
    from zoo.evaluate import build_dataset, build_model
    from zoo.inference import HeatmapModel, Numerics, inference_mode

    row, cfg, ckpt = _row_config(mdir, row_id, root, 0)
    dataset = build_dataset(cfg)
    crops = []
    for chunk in chunk_loader(dataset, list(range(len(dataset)))):
        crops.append(chunk["crops"])
        if sum(len(c) for c in crops) >= batch:
            break
    x = torch.cat(crops)[:batch].to(device)
    model = HeatmapModel(
        build_model(cfg, device, fetch.load_checkpoint(ckpt)),
        dataset.metainfo["flip_indices"],
        cuda_graphs=graphs,
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with inference_mode(Numerics.for_config(cfg, device, cuda_graphs=graphs)), torch.no_grad():
        for _ in range(3):
            model(x)
        sync()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds or n < 3:
            model(x)
            n += 1
        sync()
        elapsed = time.perf_counter() - t
    return {"boxes_per_s": n * len(x) / elapsed, "batch": len(x), "iterations": n, "graphs": graphs}


def eval_full_worker(seed: int) -> dict[str, Any]:
    """Post-processing + evaluation of one row at full scale (P1's synthetic set), seconds."""
    from benchmarks.eval_speed import _instances, synthesize
    from zoo import metrics

    dataset, boxes = synthesize(5000, FULL_BOXES / 5000, seed)
    instances = _instances(boxes)
    t = time.perf_counter()
    results = metrics.postprocess(instances)
    records = results.to_records()
    metrics.evaluate(results, dataset)
    return {"seconds": time.perf_counter() - t, "boxes": len(boxes), "records": len(records)}


# --------------------------------------------------------------------------------------------------
# driver


def _prepare(work: Path, images: int, rows: Sequence[str], seed: int) -> tuple[Path, Path, dict[str, Any]]:
    """Synthetic COCO-sized data and the rows' random-weight checkpoints, fetched into the cache."""
    from benchmarks.data_speed import prepare_data

    data = prepare_data(work / "data", images, seed, noise=24.0)
    return _common.local_zoo(work, rows, work / "data", seed), work / "data", data


class Budget:
    """The seconds left of a time budget (the lent machine's minutes). A step is started only with
    `MIN_STEP_S` left and each child process gets at most what is left, so an exhausted budget ends
    the run with its files written and the steps not run named, instead of a kill mid-write."""

    MIN_STEP_S = 20.0

    def __init__(self, budget: float | None) -> None:
        self.end = None if budget is None else time.perf_counter() + budget

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.perf_counter()

    def timeout(self, cap: float) -> float:
        return max(1.0, min(cap, self.left()))


def _run_steps(res: dict[str, Any], steps: Sequence[tuple[str, Any]], budget: Budget, log: Any) -> None:
    """Run `steps` (key, fn(timeout)) of one row, in order. A failed one is recorded and the others
    go on: the machine is lent for minutes, and one broken path must not cost the rest."""
    for name, fn in steps:
        if budget.left() < Budget.MIN_STEP_S:
            res["errors"][name] = "not run: the time budget was spent"
            continue
        try:
            res[name] = fn(budget.timeout(900))
        except Exception as exc:  # noqa: BLE001
            res["errors"][name] = str(exc)[-500:]
            log(f"{res['row']}: {name} failed: {res['errors'][name]}")


def _core_steps(work: Path, mdir: Path, root: Path, res: dict[str, Any], device: str, workers: int,
                model_seconds: float) -> list[tuple[str, Any]]:  # fmt: skip
    """What the issue's keys need, per row: zoo run, Runner.test and the eager model-bound pace."""
    row_id = res["row"]
    args = [str(mdir), row_id, str(root)]
    return [
        ("zoo", lambda t: _zoo_run(work, "zoo", row_id, _run_args(mdir, root, device, workers), t)),
        ("runner", lambda t: _common.run_worker(
            MODULE, ["--runner", *args, str(workers), device, str(work / f"mm-{row_id}")], timeout=t)),
        ("model_bound", lambda t: _common.run_worker(
            MODULE, ["--model-bound", *args, device, str(_batch(res)), str(model_seconds), "0"], timeout=t)),
    ]  # fmt: skip


def _graph_steps(work: Path, mdir: Path, root: Path, res: dict[str, Any], device: str, workers: int,
                 model_seconds: float) -> list[tuple[str, Any]]:  # fmt: skip
    """The opt-in `--cuda-graphs` mode and its model-bound pace (measured after everything else)."""
    row_id = res["row"]
    args = [str(mdir), row_id, str(root)]
    common = [*_run_args(mdir, root, device, workers), "--cuda-graphs"]
    return [
        ("zoo_graphs", lambda t: _zoo_run(work, "zoo_graphs", row_id, common, t)),
        ("model_bound_graphs", lambda t: _common.run_worker(
            MODULE, ["--model-bound", *args, device, str(_batch(res)), str(model_seconds), "1"], timeout=t)),
    ]  # fmt: skip


def _run_args(mdir: Path, root: Path, device: str, workers: int) -> list[str]:
    return ["--manifests", str(mdir), "--data-root", str(root), "--device", device, "--workers", str(workers),
            "--no-progress"]  # fmt: skip


def _compare(work: Path, res: dict[str, Any]) -> None:
    """The identity checks between whatever paths of the row were measured."""
    row_id = res["row"]
    if "zoo" in res and "runner" in res:
        res["identical"] = _records_equal(
            work / "zoo" / row_id / "predictions.json.gz", Path(res["runner"]["records_file"])
        )
        whole = res["zoo"]["record"]["metrics"]["wholebody"]
        res["metrics_identical"] = (
            whole["AP"] == res["runner"]["scores"]["coco-wholebody/AP"]
            and whole["AR"] == res["runner"]["scores"]["coco-wholebody/AR"]
        )
    if "zoo" in res and "zoo_graphs" in res:
        read = [(work / m / row_id / "predictions.json.gz").read_bytes() for m in ("zoo", "zoo_graphs")]
        res["graphs_identical"] = read[0] == read[1]


def _batch(res: dict[str, Any]) -> int:
    """The batch size zoo ran the row with (its config's), for the model-bound run."""
    return res["zoo"]["record"]["inference"]["batch_size"] if "zoo" in res else 32


def _zoo_run(work: Path, mode: str, row_id: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    wall, _ = _zoo(["run", row_id, *args, "--out", str(work / mode)], timeout=timeout)
    return {"wall_s": wall, "record": json.loads((work / mode / row_id / "result.json").read_text())}


def _records_equal(ours: Path, theirs: Path) -> bool:
    return json.loads(gzip.decompress(ours.read_bytes())) == json.loads(theirs.read_text())


def run(
    rows: Sequence[str] = ROWS,
    images: int = 40,
    device: str = "cuda",
    workers: int = 8,
    seed: int = 0,
    table: bool = True,
    model_seconds: float = 5.0,
    out: Path = _common.RESULTS_DIR,
    log: Any = print,
    table_rows: Sequence[str] | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Measure, write gpu_speed.csv/.md and merge the GPU keys into summary.json. The whole-table
    run covers `table_rows` (default: every row of the table).

    In order of what the issue's keys need, files rewritten after each step, so a budget (`budget_s`,
    the lent machine's minutes) that runs out leaves the most important numbers: every row's zoo run,
    Runner.test and model-bound pace, then the whole table, then the CUDA-graph mode per row."""
    from zoo.manifest import load_manifests

    if not table:
        table_rows = []
    elif table_rows is None:
        table_rows = [r.id for r in load_manifests(MANIFESTS).table(TABLE).rows]
    budget = Budget(budget_s)
    work = Path(tempfile.mkdtemp(prefix="zoo-bench-gpu-"))
    try:
        t = time.perf_counter()
        mdir, root, data = _prepare(work, images, list(dict.fromkeys([*rows, *table_rows])), seed)
        log(
            f"prepared {data['images']} images, {data['detections']} boxes, checkpoints in {time.perf_counter() - t:.0f} s"
        )
        results = [{"row": row_id, "errors": {}} for row_id in rows]
        table_result: dict[str, Any] | None = None

        def save() -> dict[str, Any]:
            return _write(results, table_result, data, images, device, workers, out)

        phases = [_core_steps] + ([_graph_steps] if device.startswith("cuda") else [])
        for n, phase in enumerate(phases):
            for res in results:
                _run_steps(res, phase(work, mdir, root, res, device, workers, model_seconds), budget, log)
                _compare(work, res)
                log(_row_line(res))
                summary = save()
            if n == 0 and table:  # the whole table before the opt-in mode
                table_result = _table(work, mdir, root, device, workers, seed, budget, log)
                summary = save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _table(
    work: Path, mdir: Path, root: Path, device: str, workers: int, seed: int, budget: Budget, log: Any
) -> dict[str, Any]:
    """`zoo run --table` timed and extrapolated to full scale; {"error": ...} when it did not run.

    On a GPU it runs with `--cuda-graphs`, the fastest mode that keeps every number (the same kernels
    replayed): its predictions of the benchmarked rows are compared byte for byte with their eager
    `zoo run`s, and each record says whether capture succeeded (a row where it failed ran eagerly)."""
    if budget.left() < Budget.MIN_STEP_S:
        return {"error": "not run: the time budget was spent"}
    graphs = ["--cuda-graphs"] if device.startswith("cuda") else []
    try:
        wall, _ = _zoo(
            [
                "run",
                "--table",
                TABLE,
                *_run_args(mdir, root, device, workers),
                *graphs,
                "--out",
                str(work / "table"),
            ],
            timeout=budget.timeout(1800),
        )
        records = [json.loads(p.read_text()) for p in sorted((work / "table").glob("*/result.json"))]
        failed = [r["row_id"] for r in records if r["status"] != "ok"]
        if failed:
            raise RuntimeError(f"the table run failed for {', '.join(failed)}")
        full_eval = _common.run_worker(MODULE, ["--eval-full", str(seed)], timeout=budget.timeout(600))
    except Exception as exc:  # noqa: BLE001
        log(f"table: failed: {str(exc)[-500:]}")
        return {"error": str(exc)[-500:]}
    passes: dict[tuple, tuple[float, float]] = {}
    for r in records:  # rows sharing a pass report the same pass
        inference = r["inference"]
        steady = inference["crops"] / inference["crops_per_s"]  # the pass from its first crops on
        passes[tuple(sorted([r["row_id"], *inference["shared_pass"]]))] = (
            r["timings"]["inference_s"],
            steady,
        )
    boxes = records[0]["inference"]["crops"]
    evaluation = sum(
        r["timings"].get("evaluation_s", 0) + r["timings"].get("postprocess_s", 0) for r in records
    )
    pass_s = sum(total for total, _ in passes.values())
    full_pass_s = sum(total - steady + steady * FULL_BOXES / boxes for total, steady in passes.values())
    fixed_s = wall - pass_s - evaluation  # start-up, model builds, data set builds, writing records
    full_s = fixed_s + full_pass_s + len(records) * full_eval["seconds"]
    eager = {r["row_id"]: work / "zoo" / r["row_id"] / "predictions.json.gz" for r in records}
    result = {
        "cuda_graphs": {r["row_id"]: r["inference"]["cuda_graphs"] for r in records},
        "identical_to_eager": {
            row_id: (work / "table" / row_id / "predictions.json.gz").read_bytes() == path.read_bytes()
            for row_id, path in eager.items()
            if path.exists()
        },
        "rows": len(records),
        "passes": len(passes),
        "boxes_per_row": boxes,
        "wall_s": wall,
        "pass_s": pass_s,
        "fixed_s": fixed_s,
        "evaluation_s": evaluation,
        "full_eval_s_per_row": full_eval["seconds"],
        "full_minutes": full_s / 60,
    }
    log(f"table: {len(records)} rows in {len(passes)} passes, {wall:.0f} s; full scale {full_s / 60:.1f} min")
    return result


def _rate(res: dict[str, Any], key: str) -> float | None:
    """boxes/s of one measurement of a row (None when it failed)."""
    if key in ("zoo", "zoo_graphs"):
        return res[key]["record"]["inference"]["crops_per_s"] if key in res else None
    if key == "zoo_warm":  # once its one-time costs were paid (None in a pass too short to warm up)
        return res["zoo"]["record"]["inference"].get("warm_crops_per_s") if "zoo" in res else None
    if key == "runner":
        return res["runner"]["boxes"] / res["runner"]["loop_s"] if "runner" in res else None
    return res[key]["boxes_per_s"] if key in res else None


def _row_line(res: dict[str, Any]) -> str:
    def f(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    return (
        f"{res['row']}: zoo {f(_rate(res, 'zoo'))} boxes/s, graphs {f(_rate(res, 'zoo_graphs'))}, runner "
        f"{f(_rate(res, 'runner'))}, model-bound {f(_rate(res, 'model_bound'))} (graphs "
        f"{f(_rate(res, 'model_bound_graphs'))}), identical {res.get('identical')}/{res.get('metrics_identical')}, "
        f"graphs identical {res.get('graphs_identical')}"
    )


def _write(
    results: list[dict[str, Any]], table: dict[str, Any] | None, data: dict[str, Any], images: int, device: str,
    workers: int, out: Path,
) -> dict[str, Any]:  # fmt: skip
    import torch

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    rows = []
    for res in results:
        rec = res["zoo"]["record"] if "zoo" in res else {"inference": {}, "timings": {}}
        zoo, runner, bound = _rate(res, "zoo"), _rate(res, "runner"), _rate(res, "model_bound")
        rows.append({
            "row": res["row"], "boxes": rec["inference"].get("crops"), "batch_size": rec["inference"].get("batch_size"),
            "zoo_boxes_per_s": zoo, "zoo_graphs_boxes_per_s": _rate(res, "zoo_graphs"),
            "runner_boxes_per_s": runner, "model_bound_boxes_per_s": bound,
            "model_bound_graphs_boxes_per_s": _rate(res, "model_bound_graphs"),
            "zoo_warm_boxes_per_s": _rate(res, "zoo_warm"),
            "speedup": ratio(zoo, runner), "fraction_of_model_bound": ratio(zoo, bound),
            "warm_fraction_of_model_bound": ratio(_rate(res, "zoo_warm"), bound),
            "graphs_speedup": ratio(_rate(res, "zoo_graphs"), runner),
            "graphs_fraction_of_model_bound": ratio(_rate(res, "zoo_graphs"), bound),
            "zoo_wall_s": res["zoo"]["wall_s"] if "zoo" in res else None,
            "runner_test_s": res["runner"]["test_s"] if "runner" in res else None,
            "runner_build_s": res["runner"]["build_s"] if "runner" in res else None,
            "zoo_model_build_s": rec["timings"].get("model_build_s"),
            "decode": rec["inference"].get("decode"), "decode_workers": rec["inference"].get("decode_workers"),
            "cuda_graphs": res["zoo_graphs"]["record"]["inference"].get("cuda_graphs") if "zoo_graphs" in res else None,
            "identical": bool(res.get("identical") and res.get("metrics_identical")),
            "graphs_identical": res.get("graphs_identical"),
            "errors": "; ".join(f"{k}: {v}" for k, v in res["errors"].items()),
        })  # fmt: skip
    device_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    summary = {
        "date": _common.now_iso(),
        "machine": _common.machine_info(PACKAGES) | {"device": device_name},
        "images": images,
        "boxes_per_image": round(data["detections"] / data["images"], 1),
        "workers": workers,
        "rows": rows,
        "table": table,
        "gpu_speedup": _smallest(r["speedup"] for r in rows),
        "gpu_fraction_of_model_bound": _smallest(r["fraction_of_model_bound"] for r in rows),
        "gpu_fraction_of_model_bound_warm": _smallest(r["warm_fraction_of_model_bound"] for r in rows),
        "gpu_table_minutes": round(table["full_minutes"], 1) if table and "full_minutes" in table else None,
        # every compared row, and the table's rows against their eager runs
        "gpu_identical": all(r["identical"] for r in rows)
        and all((table or {}).get("identical_to_eager", {}).values()),
    }
    _common.write_csv(out / CSV_NAME, rows)
    _common.write_text(out / MD_NAME, _markdown(summary))
    keys = (
        "gpu_speedup", "gpu_fraction_of_model_bound", "gpu_fraction_of_model_bound_warm", "gpu_table_minutes",
        "gpu_identical",
    )  # fmt: skip
    if device.startswith("cuda"):  # the GPU keys hold GPU measurements only
        _common.update_summary(out, {
            **{k: summary[k] for k in keys},
            "runs": {"gpu_speed": {k: v for k, v in summary.items() if k not in keys}},
        })  # fmt: skip
    return summary


def _smallest(values: Any) -> float | None:
    """The worst row's figure; None when any row lacks it (a failed measurement is not a pass)."""
    values = list(values)
    return None if not values or any(v is None for v in values) else round(min(values), 3)


def _num(value: float | None, fmt: str) -> str:
    """A figure, or "—" where it was not measured (the errors column says why)."""
    return "—" if value is None else format(value, fmt)


def _markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    lines = [
        "# P3 GPU speed: zoo run vs mmpose's Runner.test, and the whole table",
        "",
        f"Generated by `python -m {MODULE}` on {summary['date']}. Do not edit by hand.",
        "",
        f"- Device: {m['device']}; host {m['cpu']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB RAM, "
        f"Python {m['python']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        f"- Data: {summary['images']} synthetic 640 px images, {summary['boxes_per_image']} detector boxes per image; "
        f"random-weight checkpoints in OpenMMLab's layout; {summary['workers']} data workers for both paths",
        "- boxes/s over each path's loop from its first batch on, the data workers' start-up excluded",
        "  (zoo: its data pass, `inference.crops_per_s`; the Runner: its test loop without the metric);",
        "  model-bound: forward + flip test on a batch already on the GPU, the same batch size.",
        "- zoo warm: the same pass once its one-time costs were paid (cuDNN's first calls, graph capture, the",
        "  first batch's check against mmpose's decode): the boxes whose crops arrived after every row's first",
        "  batch was decoded, over the time from then to the end (`inference.warm_crops_per_s`); a short run is",
        "  dominated by those costs, a full-scale one is not. The comparable of model-bound, which is timed warm.",
        "- —: not measured (the errors column says why: a failure, or a step the time budget did not reach)",
        "",
        "| row | batch | zoo boxes/s | zoo + CUDA graphs | Runner boxes/s | model-bound | model-bound, graphs | "
        "zoo / Runner | zoo / model-bound | zoo warm | warm / model-bound | identical | graphs identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        *(
            f"| {r['row']} | {r['batch_size']} | {_num(r['zoo_boxes_per_s'], '.0f')} | "
            f"{_num(r['zoo_graphs_boxes_per_s'], '.0f')} | {_num(r['runner_boxes_per_s'], '.1f')} | "
            f"{_num(r['model_bound_boxes_per_s'], '.0f')} | {_num(r['model_bound_graphs_boxes_per_s'], '.0f')} | "
            f"{_num(r['speedup'], '.1f')}x | {_num(r['fraction_of_model_bound'], '.0%')} | "
            f"{_num(r['zoo_warm_boxes_per_s'], '.0f')} | {_num(r['warm_fraction_of_model_bound'], '.0%')} | "
            f"{r['identical']} | "
            f"{r['graphs_identical']} |"
            for r in summary["rows"]
        ),
        "",
        "| row | zoo wall s (process) | zoo model build s | Runner build s | Runner test() s | decode | decode threads "
        "| CUDA graphs | errors |",
        "|---|---:|---:|---:|---:|---|---:|---|---|",
        *(
            f"| {r['row']} | {_num(r['zoo_wall_s'], '.1f')} | {_num(r['zoo_model_build_s'], '.2f')} | "
            f"{_num(r['runner_build_s'], '.1f')} | {_num(r['runner_test_s'], '.1f')} | {r['decode']} | "
            f"{r['decode_workers']} | {r['cuda_graphs']} | {r['errors']} |"
            for r in summary["rows"]
        ),
        "",
        f"- `gpu_speedup` (the smallest zoo / Runner ratio): **{_num(summary['gpu_speedup'], '.1f')}x**; "
        f"`gpu_fraction_of_model_bound` (the smallest): **{_num(summary['gpu_fraction_of_model_bound'], '.0%')}** "
        f"(warm: {_num(summary['gpu_fraction_of_model_bound_warm'], '.0%')})",
        f"- Identical (zoo's results records == the ones mmpose's metric writes, whole-body AP/AR equal): "
        f"**{summary['gpu_identical']}**",
    ]
    t = summary["table"]
    if t and "error" in t:
        lines.append(f"- Whole table (`zoo run --table {TABLE}`): not measured ({t['error']})")
    elif t:
        lines += [
            f"- Whole table (`zoo run --table {TABLE}"
            f"{' --cuda-graphs' if any(v != 'off' for v in t['cuda_graphs'].values()) else ''}`, "
            f"{t['rows']} rows in {t['passes']} data passes): "
            f"{t['wall_s']:.0f} s for {t['boxes_per_row']} boxes per row, of which passes {t['pass_s']:.0f} s, "
            f"start-up and model builds {t['fixed_s']:.0f} s; at full scale ({FULL_BOXES} boxes per row, "
            f"{t['full_eval_s_per_row']:.1f} s of post-processing and evaluation per row): "
            f"**{summary['gpu_table_minutes']} minutes** (extrapolated)",
            "  - CUDA graphs per row: " + ", ".join(f"{k} {v}" for k, v in t["cuda_graphs"].items()),
            "  - predictions byte-identical to the row's eager `zoo run` above: "
            + (", ".join(f"{k} {v}" for k, v in t["identical_to_eager"].items()) or "no row to compare"),
        ]
    return "\n".join([*lines, ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--images", type=int, default=40, help="synthetic 640 px images (~21 boxes each)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8, help="data workers, both paths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-table", action="store_true", help="skip the whole-table run")
    parser.add_argument("--table-rows", nargs="+", default=None, help="the table run's rows (default: all)")
    parser.add_argument(
        "--model-seconds", type=float, default=5.0, help="timing window of the model-bound runs"
    )
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for everything; steps not started in time are named",
    )
    parser.add_argument("--runner", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--model-bound", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--eval-full", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runner:
        mdir, row_id, root, workers, device, work = args.runner
        _common.emit(runner_worker(Path(mdir), row_id, Path(root), int(workers), device, Path(work)))
        return 0
    if args.model_bound:
        mdir, row_id, root, device, batch, seconds, graphs = args.model_bound
        _common.emit(
            model_bound_worker(
                Path(mdir), row_id, Path(root), device, int(batch), float(seconds), graphs == "1"
            )
        )
        return 0
    if args.eval_full is not None:
        _common.emit(eval_full_worker(args.eval_full))
        return 0
    s = run(
        args.rows,
        args.images,
        args.device,
        args.workers,
        args.seed,
        not args.no_table,
        args.model_seconds,
        args.out,
        table_rows=args.table_rows,
        budget_s=args.budget,
    )
    print(
        f"gpu speedup {_num(s['gpu_speedup'], '.1f')}x, {_num(s['gpu_fraction_of_model_bound'], '.0%')} of "
        "model-bound, "
        f"table {s['gpu_table_minutes']} min, identical {s['gpu_identical']} -> {args.out / MD_NAME}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
