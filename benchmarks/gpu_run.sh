#!/usr/bin/env bash
# Every GPU measurement in one go, for a machine lent for minutes (README "Performance"). From the
# project root with the stack installed (on the lent H200: `source .device/setup.sh && bash
# benchmarks/gpu_run.sh`). Each step is bounded so that a slow one cannot take the others' time,
# and results land in $OUT (default benchmarks/results/device/) as they are made:
#   1. `zoo env` and the decode identity tests on this machine's numpy, OpenCV and CPU;
#   2. start-up of a `zoo run` process against mmpose's init_model (benchmarks/startup_speed.py);
#   3. benchmarks/gpu_speed.py: zoo run vs Runner.test, model-bound, CUDA graphs, the whole table.
# Knobs (environment): OUT, BUDGET (seconds for all steps, default 330), IMAGES (default 32),
# DEVICE (default cuda), ROWS and TABLE_ROWS (space-separated row ids; default: gpu_speed's).
set -u
py=${PY:-python3}
out=${OUT:-benchmarks/results/device}
budget=${BUDGET:-330}
mkdir -p "$out"
start=$SECONDS
say() { echo "gpu_run: [$((SECONDS - start)) s] $*"; }
left() { echo $((budget - (SECONDS - start))); }

"$py" -m zoo env --json >"$out/env.json" 2>&1
say "zoo env exit $?"
timeout 90 "$py" -m pytest -q -x -p no:cacheprovider -m "not slow" tests/test_decode.py >"$out/tests.log" 2>&1
say "decode identity tests exit $? ($(tail -n 1 "$out/tests.log"))"
# one row: each repeat is two fresh processes (zoo's path and mmpose's init_model), ~14 s each there
timeout 90 "$py" -m benchmarks.startup_speed --rows hrnet-w48-dark-plus-384x288 --repeats 1 --label device \
  --out "$out" 2>&1 | tail -n 2
say "start-up done"
# shellcheck disable=SC2086  # ROWS/TABLE_ROWS are word lists on purpose
timeout "$(left)" "$py" -m benchmarks.gpu_speed --images "${IMAGES:-32}" --device "${DEVICE:-cuda}" \
  --model-seconds 3 --out "$out" ${ROWS:+--rows $ROWS} ${TABLE_ROWS:+--table-rows $TABLE_ROWS} 2>&1 \
  | tee "$out/gpu_speed.log" | tail -n 12
say "gpu_speed exit ${PIPESTATUS[0]}"
