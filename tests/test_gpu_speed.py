"""benchmarks.gpu_speed's bookkeeping for a machine lent for minutes: a failed or unstarted step is
named in the results and never becomes a number, and the warm pace it compares with the model-bound
one counts only what came after the warm-up (the measurements themselves need CUDA)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import gpu_speed


def test_steps_go_on_past_a_failure_and_stop_when_the_budget_is_spent() -> None:
    ran: list[tuple[str, float]] = []

    def step(name: str, fail: bool = False) -> Any:
        def fn(timeout: float) -> dict[str, str]:
            ran.append((name, timeout))
            if fail:
                raise RuntimeError(f"{name} broke")
            return {"name": name}

        return fn

    res: dict[str, Any] = {"row": "r", "errors": {}}
    gpu_speed._run_steps(res, [("a", step("a", fail=True)), ("b", step("b"))], gpu_speed.Budget(None), print)
    assert [n for n, _ in ran] == ["a", "b"] and all(t == 900 for _, t in ran)
    assert res["errors"] == {"a": "a broke"} and res["b"] == {"name": "b"} and "a" not in res

    ran.clear()
    left = gpu_speed.Budget(gpu_speed.Budget.MIN_STEP_S + 5)
    gpu_speed._run_steps(res, [("c", step("c"))], left, print)
    assert ran and ran[0][1] <= gpu_speed.Budget.MIN_STEP_S + 5  # a child gets at most what is left
    spent: dict[str, Any] = {"row": "r", "errors": {}}
    gpu_speed._run_steps(spent, [("d", step("d")), ("e", step("e"))], gpu_speed.Budget(1.0), print)
    assert [n for n, _ in ran] == ["c"]
    assert spent["errors"] == {k: "not run: the time budget was spent" for k in ("d", "e")}


def test_unmeasured_steps_leave_the_keys_null_and_are_named(tmp_path: Path) -> None:
    record = {"inference": {"crops": 64, "crops_per_s": 300.0, "warm_crops_per_s": 360.0, "batch_size": 32},
              "timings": {"model_build_s": 1.0}}  # fmt: skip
    measured = {
        "row": "a", "errors": {}, "zoo": {"wall_s": 9.0, "record": record},
        "runner": {"boxes": 64, "loop_s": 0.64, "test_s": 2.0, "build_s": 3.0},
        "model_bound": {"boxes_per_s": 400.0}, "identical": True, "metrics_identical": True,
    }  # fmt: skip
    unstarted = {"row": "b", "errors": {"zoo": "not run: the time budget was spent"}}
    data = {"images": 2, "detections": 64}
    args = (data, 2, "cpu", 1, tmp_path)

    one = gpu_speed._write([measured], {"error": "not run: the time budget was spent"}, *args)
    assert one["gpu_speedup"] == 3.0 and one["gpu_fraction_of_model_bound"] == 0.75
    assert one["gpu_fraction_of_model_bound_warm"] == 0.9
    assert one["gpu_table_minutes"] is None and one["gpu_identical"] is True
    md = (tmp_path / gpu_speed.MD_NAME).read_text()
    assert "Whole table (`zoo run --table coco-wholebody`): not measured (not run: the time budget" in md

    table = {"cuda_graphs": {"a": "on", "c": "on"}, "identical_to_eager": {"a": False}, "rows": 2, "passes": 1,
             "boxes_per_row": 64, "wall_s": 30.0, "pass_s": 10.0, "fixed_s": 18.0, "evaluation_s": 2.0,
             "full_eval_s_per_row": 9.0, "full_minutes": 12.34}  # fmt: skip
    graphs = gpu_speed._write([measured], table, *args)
    assert graphs["gpu_table_minutes"] == 12.3 and graphs["gpu_identical"] is False  # the table changed a bit
    md = (tmp_path / gpu_speed.MD_NAME).read_text()
    assert "`zoo run --table coco-wholebody --cuda-graphs`" in md and "eager `zoo run` above: a False" in md

    both = gpu_speed._write([measured, unstarted], None, *args)
    assert both["gpu_speedup"] is None and both["gpu_fraction_of_model_bound"] is None
    assert both["gpu_fraction_of_model_bound_warm"] is None
    assert both["gpu_identical"] is False  # a row not compared is not identical
    md = (tmp_path / gpu_speed.MD_NAME).read_text()
    assert "| b | None | — |" in md and "zoo: not run: the time budget was spent" in md
    assert not (tmp_path / "summary.json").exists()  # a CPU dry run never writes the GPU keys
    assert json.loads(json.dumps(both))  # the summary is plain JSON


def test_the_warm_pace_counts_only_what_came_after_the_warm_up() -> None:
    """`warm_samples_per_s`: the samples that arrived after every row's first batch was decoded, over
    the time from then on; None when the pass never warmed up (the rate would be a guess)."""
    from zoo.inference import PassStats

    stats = PassStats(samples=100, seconds=10.0, first_chunk_s=1.0)
    assert stats.warm_samples_per_s is None and stats.samples_per_s == 100 / 9
    stats.warm_at_s, stats.warm_samples = 2.0, 80
    assert stats.warm_samples_per_s == 10.0
