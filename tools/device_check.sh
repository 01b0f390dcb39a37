#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run: build the extension with CUDA, the GPU tests of
# tests/test_ops.py (CUDA against CPU, gradcheck, opcheck, half precision, torch.compile), then
# `tools/bench_fused.py --device cuda` and `tools/bench_net.py --device cuda --quick`.  Writes one
# JSON (device_check.json: each step's exit status and time, the tests' counts, both benchmarks)
# and the README's tables (README_tables.md) to $OUT (the folder a device run brings back), else
# bench/device_check.  Each step has a time limit so the whole fits in ten minutes on an H100/H200
# from a cold start.
#
# Without a GPU it says so and runs a dry mode instead: the CPU side of the CUDA checks (the CUDA
# kernels under the emulated launch, tests/test_cuda_emulated.py) and exits 0.
# DEVICE_CHECK_DRY=collect narrows the dry run to a syntax check of this script and collecting
# those tests (what tests/test_device_check.py runs, to keep it fast).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
out=${OUT:-bench/device_check}

if [ "$($py -c 'import torch; print(int(torch.cuda.is_available()))')" != 1 ]; then
  if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    echo "device_check: nvidia-smi sees a GPU but this torch ($($py -c 'import torch; print(torch.__version__)')) has no CUDA: dry run"
  else
    echo "device_check: no CUDA GPU on this machine: dry run"
  fi
  bash -n "$0"
  if [ "${DEVICE_CHECK_DRY:-}" = collect ]; then
    $py -m pytest -q --collect-only -p no:randomly tests/test_cuda_emulated.py | tail -n 1
  else
    $py -m pytest -q -p no:randomly tests/test_cuda_emulated.py
  fi
  echo "device_check: dry run passed"
  exit 0
fi

mkdir -p "$out"
: > "$out/steps.jsonl"
failed=0
# step NAME SECONDS COMMAND...: runs COMMAND under a time limit, log in $out/NAME.log.
step() {
  local name=$1 limit=$2 began rc
  shift 2
  echo "== $name (at most ${limit} s)"
  began=$(date +%s)
  set +e
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  set -e
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - began ))}" >> "$out/steps.jsonl"
  tail -n 3 "$out/$name.log"
  [ "$rc" -eq 0 ] || failed=1
}

# Only this GPU's architecture: a quarter of the nvcc time of a fat binary.
arch=$($py -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
step build 240 env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="$arch" \
  $py setup.py build_ext --inplace
step gpu_tests 120 $py -m pytest -q -p no:randomly tests/test_ops.py -k "cuda or torch_compile" \
  --junitxml="$out/gpu_tests.xml"
step bench_fused 100 $py tools/bench_fused.py --device cuda --rounds 15 --net-rounds 3 \
  --json "$out/bench_fused_cuda.json"
step bench_net 120 $py tools/bench_net.py --device cuda --quick --json "$out/bench_net_cuda.json"

$py - "$out" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
report = {"steps": [json.loads(line) for line in open(os.path.join(out, "steps.jsonl"))],
          "bench_fused": load("bench_fused_cuda.json"), "bench_net": load("bench_net_cuda.json")}
xml = os.path.join(out, "gpu_tests.xml")
if os.path.exists(xml):
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    report["gpu_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
json.dump(report, open(os.path.join(out, "device_check.json"), "w"), indent=1)
with open(os.path.join(out, "README_tables.md"), "w") as fh:
    for title, b in (("The fused skip op, CUDA", report["bench_fused"]), ("Whole nets, CUDA", report["bench_net"])):
        if b:
            fh.write(f"### {title} ({b['meta'].get('gpu') or b['meta'].get('machine')})\n\n{b['table']}\n\n")
print(json.dumps(report["steps"]), report.get("gpu_tests"))
PY
echo "device_check: wrote $out/device_check.json and $out/README_tables.md"
exit "$failed"
