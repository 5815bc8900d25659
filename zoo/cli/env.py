"""`zoo env` / `zoo doctor`: what the harness runs on, and whether it can run at all."""

from __future__ import annotations

import argparse
import json
import sys

from zoo.cli import add_common


def _flatten(env: dict) -> list[tuple[str, str]]:
    rows = [
        ("zoo", f"{env['zoo']} ({env['git_commit'] or 'no git'})"),
        ("python", env["python"]),
        ("platform", env["platform"]),
    ]
    for name, info in env["packages"].items():
        rows.append((name, info["version"] or f"BROKEN: {info['error']}"))
    ops = env["mmcv_ops"]
    rows.append(("mmcv ops", "loaded" if ops["loaded"] else f"BROKEN: {ops['error']}"))
    rows.append(("torchvision fix", "applied" if env["compat"]["torchvision_schema_fix"] else "not needed"))
    dev = env["device"]
    if "error" in dev:
        rows.append(("device", f"BROKEN: {dev['error']}"))
    elif dev["cuda_available"]:
        for i, gpu in enumerate(dev["gpus"]):
            rows.append((f"cuda:{i}", f"{gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB)"))
        rows.append(("CUDA / cuDNN", f"{dev['torch_cuda']} / {dev['cudnn']}"))
    else:
        rows.append(("device", f"CPU {dev['cpu']}, {dev['cpu_threads']} threads (no CUDA)"))
    rows.append(("cache dir", env["dirs"]["cache"]))
    rows.append(("data root", env["dirs"]["data_root"] or "(unset: pass --data-root or set ZOO_DATA_ROOT)"))
    return rows


def _run(args: argparse.Namespace) -> int:
    from zoo.env import collect_env, problems

    env = collect_env()
    found = problems(env)
    if args.json:
        print(json.dumps({**env, "problems": found}, indent=2, sort_keys=True))
    else:
        from tabulate import tabulate

        print(tabulate(_flatten(env), tablefmt="plain"))
    for line in found:
        print(f"zoo: error: {line}", file=sys.stderr)
    return 3 if found else 0


def register(sub: argparse._SubParsersAction) -> None:
    for name in ("env", "doctor"):
        p = sub.add_parser(name, help="report versions, compiled ops and device; non-zero if broken")
        add_common(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=_run)
