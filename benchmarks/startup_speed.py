"""Start-up: what `zoo run` spends before its first batch, in a fresh process, on a warm machine.

Each measurement is a new Python process (the file cache warmed by one untimed run first) that
imports the stack the way `zoo run` does, loads the row's config, reads a verified checkpoint and
builds the model with its weights. Start-up is the wall-clock time from launching that process to
its model being built (what a user waits before the first batch; judged against the target); also
shown: the seconds of each step inside the process, and the whole process's wall time, which adds
the interpreter's exit (tearing down torch and the OpenMMLab modules, ~0.5-1 s, paid after a run).
The same is measured for mmpose's `init_model` (the reference: what its users run to build a model).
Also recorded: which `transformers` is installed and whether it was imported (mmdet
imports it for its language models when its model registry loads, which CSPNeXt's backbone needs;
`zoo.compat.import_models` keeps it out). Run it once in an environment with transformers and once
without (`--extra-path DIR` puts a folder holding it on the path).

On a GPU machine `--device cuda` builds the model there, as `zoo run` would (CUDA's initialisation
counts), and `--profile-imports` runs one more process under `-X importtime` to say which packages
the import time goes to (a lent machine gives no second chance to ask).

    python -m benchmarks.startup_speed
    python -m benchmarks.startup_speed --extra-path /tmp/with-transformers --label with-transformers
    python -m benchmarks.startup_speed --rows hrnet-w48-dark-plus-384x288 --device cuda --profile-imports
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common

MODULE = "benchmarks.startup_speed"
PACKAGES = ("torch", "mmpose", "mmdet", "mmcv")
ROWS = ("hrnet-w48-dark-plus-384x288", "cspnext-m-udp-256x192")
TARGET_S = 5.0


def worker(mdir: Path, row_id: str, device: str) -> dict[str, Any]:
    """The steps of `zoo run` before its first batch, the model built on `device` as the run would
    (on a GPU that includes CUDA's initialisation); seconds each (this process was just started)."""
    marks = [("start", time.perf_counter())]
    import zoo.evaluate as evaluate  # the CLI's own imports
    from zoo import fetch
    from zoo.data import dataset_paths, load_registry
    from zoo.manifest import load_manifests

    marks.append(("import", time.perf_counter()))
    row = load_manifests(mdir).row(row_id)
    cfg = evaluate.load_config(row, dataset_paths(load_registry(mdir).get(row.dataset), mdir))
    marks.append(("config", time.perf_counter()))
    ckpt = fetch.fetch_row(row, lock=fetch.ChecksumLock(mdir / "checkpoints.lock"), offline=True)
    state = fetch.load_checkpoint(ckpt)  # re-hashed: the verified-load path
    marks.append(("weights", time.perf_counter()))
    evaluate.build_model(cfg, device, state)
    _synchronize(device)
    marks.append(("model", time.perf_counter()))
    return _facts(marks)


def _synchronize(device: str) -> None:
    """Wait for the device's queued work, so that a step's time includes it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def reference_worker(config: str, checkpoint: str, device: str) -> dict[str, Any]:
    """What a user of mmpose runs to get the same model: `mmpose.apis.init_model`."""
    marks = [("start", time.perf_counter())]
    from zoo import compat

    compat.apply()  # on this stack `import mmpose.apis` cannot work without it (README "Stack fixes")
    from mmpose.apis import init_model

    marks.append(("import", time.perf_counter()))
    with compat.checkpoint_safe_globals():  # torch>=2.6's weights_only load, as in zoo's path
        init_model(config, checkpoint, device=device)
    _synchronize(device)
    marks.append(("model", time.perf_counter()))
    return _facts(marks)


def _facts(marks: list[tuple[str, float]]) -> dict[str, Any]:
    """A worker's answer: its steps, and the wall-clock moment its model was ready (the parent
    subtracts its launch time: start-up seen from outside, without the interpreter's exit)."""
    return {
        "ready_wall": time.time(),
        "steps": {b[0]: b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)},
        "in_process_s": marks[-1][1] - marks[0][1],
        "transformers_installed": _installed_version("transformers"),
        "transformers_imported": "transformers" in sys.modules,
    }


def _installed_version(name: str) -> str | None:
    """The version of `name` this process would import (None: not installed), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec(name) is None:
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _measure(args: Sequence[str], env: dict[str, str], repeats: int) -> dict[str, Any]:
    """Medians over `repeats` fresh worker processes, after one that warms the file cache."""
    walls, readies, inner = [], [], []
    for rep in range(repeats + 1):
        launched, t = time.time(), time.perf_counter()
        facts = _common.run_worker(MODULE, args, timeout=600, env=env)
        if rep:
            walls.append(time.perf_counter() - t)
            inner.append(facts)
            readies.append(facts["ready_wall"] - launched)
    last = inner[-1]
    return {
        "ready_s": _common.median(readies), "process_s": _common.median(walls),
        "in_process_s": _common.median(i["in_process_s"] for i in inner),
        "steps": {k: _common.median(i["steps"][k] for i in inner) for k in last["steps"]},
        "transformers_installed": last["transformers_installed"],
        "transformers_imported": last["transformers_imported"],
    }  # fmt: skip


def import_profile(stderr: str, top: int = 12) -> dict[str, Any]:
    """`-X importtime`'s report, as seconds of self time per top-level package (the biggest `top`,
    the rest summed as "other"): which packages a start-up pays for, not who imported them first."""
    per: dict[str, float] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)$", line)
        if match:
            root = match[2].split(".")[0]
            per[root] = per.get(root, 0.0) + int(match[1]) / 1e6
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    by_package = dict(ranked[:top])
    if ranked[top:]:
        by_package["other"] = sum(v for _, v in ranked[top:])
    return {"total_s": sum(per.values()), "by_package": by_package}


def run(
    rows: Sequence[str] = ROWS, repeats: int = 3, extra_path: Path | None = None, label: str = "default",
    out: Path = _common.RESULTS_DIR, device: str = "cpu", profile_imports: bool = False,
) -> dict[str, Any]:  # fmt: skip
    from zoo import fetch
    from zoo.manifest import load_manifests

    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), str(_common.ROOT), env.get("PYTHONPATH", "")])
    work = Path(tempfile.mkdtemp(prefix="zoo-bench-startup-"))
    results = []
    try:
        mdir = _common.local_zoo(work, rows, work)
        env["ZOO_CACHE"] = os.environ["ZOO_CACHE"]
        manifests, lock = load_manifests(mdir), fetch.ChecksumLock(mdir / "checkpoints.lock")
        for row_id in rows:
            row = manifests.row(row_id)
            ckpt = fetch.fetch_row(row, lock=lock, offline=True)
            zoo = _measure(["--worker", str(mdir), row_id, device], env, repeats)
            ref = _measure(["--reference-worker", str(row.config_path), str(ckpt.path), device], env, repeats)
            results.append({"row": row_id, **zoo, "mmpose": ref, "speedup": ref["ready_s"] / zoo["ready_s"]})
        if profile_imports:  # one more zoo process, profiled (the profile slows it: not timed)
            _common.run_worker(
                MODULE, ["--worker", str(mdir), rows[0], device], timeout=600,
                env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, stderr_to=work / "importtime.txt",
            )  # fmt: skip
            profile = {"row": rows[0], **import_profile((work / "importtime.txt").read_text())}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "date": _common.now_iso(),
        "machine": _common.machine_info(PACKAGES),
        "label": label,
        "device": device,
        "repeats": repeats,
        "rows": results,
        "startup_seconds": round(max(r["ready_s"] for r in results), 2),
        "transformers_installed": results[0]["transformers_installed"],
        "transformers_imported": any(r["transformers_imported"] for r in results),
        "import_profile": profile if profile_imports else None,
    }
    _common.write_text(out / f"startup_speed-{label}.md", _markdown(summary))
    _common.update_summary(out, {"runs": {"startup_speed": {label: summary}}})
    return summary


def _markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    steps = list(summary["rows"][0]["steps"])
    lines = [
        f"# Start-up ({summary['label']}): a fresh `zoo run` process up to its first batch",
        "",
        f"Generated by `python -m {MODULE}` on {summary['date']}. Do not edit by hand.",
        "",
        f"- Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, Python {m['python']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- transformers installed: {summary['transformers_installed'] or 'no'}; "
        f"imported by zoo: {summary['transformers_imported']}",
        f"- Model built on: {summary['device']}",
        f"- Medians of {summary['repeats']} fresh processes after one warm-up run; target {TARGET_S:.0f} s: "
        + ("met" if summary["startup_seconds"] <= TARGET_S else "not met"),
        "",
        "| row | start-up s (launch → model built) | in process s | "
        + " | ".join(f"{s} s" for s in steps)
        + " | process wall s (with exit) |",
        "|---|---:|---:|" + "---:|" * len(steps) + "---:|",
        *(
            f"| {r['row']} | {r['ready_s']:.2f} | {r['in_process_s']:.2f} | "
            + " | ".join(f"{r['steps'][s]:.2f}" for s in steps)
            + f" | {r['process_s']:.2f} |"
            for r in summary["rows"]
        ),
        "",
        "Against mmpose's own way to the same model, `mmpose.apis.init_model(config, checkpoint)` in a",
        "fresh process (its import pulls in inferencers, visualisers and mmdet's APIs):",
        "",
        "| row | zoo s | `init_model` s (import / build+load) | zoo faster by | transformers imported by `init_model` |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {r['row']} | {r['ready_s']:.2f} | {r['mmpose']['ready_s']:.2f} "
            f"({r['mmpose']['steps']['import']:.2f} / {r['mmpose']['steps']['model']:.2f}) | "
            f"{r['speedup']:.2f}× | {r['mmpose']['transformers_imported']} |"
            for r in summary["rows"]
        ),
        "",
    ]
    profile = summary["import_profile"]
    if profile:
        lines += [
            f"Import time of one more zoo process for {profile['row']} under `-X importtime` (self time summed per "
            f"top-level package; the profile slows imports a little): {profile['total_s']:.2f} s in all.",
            "",
            "| package | s |",
            "|---|---:|",
            *(f"| {k} | {v:.2f} |" for k, v in profile["by_package"].items()),
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra-path", type=Path, default=None, help="a folder put first on PYTHONPATH")
    parser.add_argument("--label", default="default", help="names the result file (e.g. with-transformers)")
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR, help="results folder")
    parser.add_argument("--device", default="cpu", help="where the model is built (cuda: as a GPU run)")
    parser.add_argument(
        "--profile-imports",
        action="store_true",
        help="one more process under -X importtime: seconds per package",
    )
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--reference-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _common.emit(worker(Path(args.worker[0]), *args.worker[1:]))
        return 0
    if args.reference_worker:
        _common.emit(reference_worker(*args.reference_worker))
        return 0
    s = run(args.rows, args.repeats, args.extra_path, args.label, args.out, args.device, args.profile_imports)
    print(
        f"start-up {s['startup_seconds']:.1f} s (transformers installed {s['transformers_installed']}, "
        f"imported {s['transformers_imported']}) -> {args.out / f'startup_speed-{args.label}.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
