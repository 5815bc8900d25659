#!/usr/bin/env bash
# Every GPU measurement in one go, for a machine lent for minutes (README "Performance"). From the
# project root with the stack installed; on a lent machine, as ONE device call (../shared/device/):
#   export CALL_START=$(date +%s); source .device/setup.sh && bash benchmarks/gpu_run.sh
# Each step is bounded so that a slow one cannot take the others' time, the most important first,
# and results land in $OUT (default benchmarks/results/device/) as they are made:
#   1. `zoo env` and the decode identity tests on this machine's numpy, OpenCV and CPU;
#   2. start-up of a `zoo run` process against mmpose's init_model, and where its import time goes
#      (benchmarks/startup_speed.py);
#   3. benchmarks/gpu_speed.py with the time left: per row zoo run, Runner.test and the model-bound
#      pace, then the whole table, then the CUDA-graph mode (steps it cannot start in time it names).
# The budget: with CALL_START (epoch seconds when the call began, setup included) it is whatever is
# left of CALL_LIMIT (default 570 s: with the 20 s backstop below, under the device's 600 s per call);
# without it, BUDGET (default 330).
# Other knobs (environment): IMAGES (default 32), DEVICE (default cuda), ROWS and TABLE_ROWS
# (space-separated row ids; default: gpu_speed's), PY (default python3).
set -u
py=${PY:-python3}
out=${OUT:-benchmarks/results/device}
if [[ -n ${CALL_START:-} ]]; then
  budget=$((${CALL_LIMIT:-570} - ($(date +%s) - CALL_START)))
else
  budget=${BUDGET:-330}
fi
mkdir -p "$out"
start=$SECONDS
say() { echo "gpu_run: [$((SECONDS - start)) s of $budget] $*"; }
left() { echo $((budget - (SECONDS - start))); }

"$py" -m zoo env --json >"$out/env.json" 2>&1
say "zoo env exit $?"
timeout 60 "$py" -m pytest -q -x -p no:cacheprovider -m "not slow" tests/test_decode.py >"$out/tests.log" 2>&1
say "decode identity tests exit $? ($(tail -n 1 "$out/tests.log"))"
# one row, one repeat, the model built on the GPU: two fresh processes each for zoo's path and mmpose's
# init_model, and one under -X importtime saying where the import time goes (~10-14 s each there)
timeout 90 "$py" -m benchmarks.startup_speed --rows hrnet-w48-dark-plus-384x288 --repeats 1 --label device \
  --device "${DEVICE:-cuda}" --profile-imports --out "$out" 2>&1 | tail -n 2
say "start-up done"
# gpu_speed stops starting steps when its budget is spent; the timeout is only a backstop
# shellcheck disable=SC2086  # ROWS/TABLE_ROWS are word lists on purpose
timeout "$(($(left) + 20))" "$py" -m benchmarks.gpu_speed --images "${IMAGES:-32}" --device "${DEVICE:-cuda}" \
  --model-seconds 3 --budget "$(left)" --out "$out" ${ROWS:+--rows $ROWS} ${TABLE_ROWS:+--table-rows $TABLE_ROWS} \
  2>&1 | tee "$out/gpu_speed.log" | tail -n 12
say "gpu_speed exit ${PIPESTATUS[0]}"
