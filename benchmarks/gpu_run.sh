#!/usr/bin/env bash
# Every GPU measurement in one go, for a machine lent for minutes (README "Performance"). From the
# project root with the stack installed (on the lent H200: `source .device/setup.sh && bash
# benchmarks/gpu_run.sh`). Each step is bounded so that a slow one cannot take the others' time;
# results land in $OUT (default benchmarks/results/device/) as they are made.
#   1. `zoo env` and the decode/crop identity tests on this machine's numpy, OpenCV and CPU;
#   2. start-up of a `zoo run` process (benchmarks/startup_speed.py);
#   3. benchmarks/gpu_speed.py: zoo run vs Runner.test, model-bound, CUDA graphs, the whole table.
set -u
out=${OUT:-benchmarks/results/device}
budget=${BUDGET:-330}  # seconds for all steps
images=${IMAGES:-40}
mkdir -p "$out"
start=$SECONDS
say() { echo "gpu_run: [$((SECONDS - start)) s] $*"; }
left() { echo $((budget - (SECONDS - start))); }

python3 -m zoo env --json >"$out/env.json" 2>&1
say "zoo env exit $?"
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_decode.py tests/test_crops.py \
  >"$out/tests.log" 2>&1
say "identity tests exit $? ($(tail -n 1 "$out/tests.log"))"
timeout 90 python3 -m benchmarks.startup_speed --repeats 2 --label device --out "$out" 2>&1 | tail -n 3
say "start-up done"
timeout "$(left)" python3 -m benchmarks.gpu_speed --images "$images" --out "$out" 2>&1 | tee "$out/gpu_speed.log" | tail -n 12
say "gpu_speed exit ${PIPESTATUS[0]}"
