#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run: build the extension with CUDA, the GPU tests (the
# fused op's CUDA kernels against the CPU op, gradcheck, opcheck, half precision, torch.compile;
# every blob of every caffe-ref net and Caffe's five solver steps on the GPU), then
# `tools/bench_fused.py --device cuda` (batches 1, 8, 32) and `tools/bench_net.py --device cuda`
# (FCN-32s and FCN-8s, batches 1 and 4).  Writes three files to $OUT (the folder a device run brings
# back, which takes few files), else bench/device_check: device_check.json (the machine, each step's
# exit status and time, the tests' counts and failures, both benchmarks), README_tables.md (the
# README's tables) and logs.tar.gz (every step's log).  Each step has a time limit so the whole fits
# in ten minutes on an H100/H200 from a cold start.  The package is used from this tree (built in
# place, on PYTHONPATH), not installed.
#
# Without a GPU it says so and runs a dry mode instead: the CPU side of the CUDA checks (the CUDA
# kernels under the emulated launch, tests/test_cuda_emulated.py) and exits 0.
# DEVICE_CHECK_DRY=collect narrows the dry run to a syntax check of this script and collecting
# those tests (what tests/test_device_check.py runs, to keep it fast).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-bench/device_check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

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
logs=$(mktemp -d)
: > "$logs/steps.jsonl"
failed=0
# step NAME SECONDS COMMAND...: runs COMMAND under a time limit, log in $logs/NAME.log.
step() {
  local name=$1 limit=$2 began rc
  shift 2
  echo "== $name (at most ${limit} s)"
  began=$(date +%s)
  set +e
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  set -e
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - began ))}" >> "$logs/steps.jsonl"
  tail -n 3 "$logs/$name.log"
  [ "$rc" -eq 0 ] || failed=1
}

{ nvidia-smi; nvcc --version; $py -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; } \
  > "$logs/machine.log" 2>&1 || true
# Only this GPU's architecture: a quarter of the nvcc time of a fat binary.
arch=$($py -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
step build 150 env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="$arch" \
  $py setup.py build_ext --inplace
step gpu_tests 100 $py -m pytest -q -p no:randomly -p no:cacheprovider -rf tests/test_ops.py \
  tests/test_net_parity.py tests/test_solver.py -k "cuda or torch_compile" --junitxml="$logs/gpu_tests.xml"
step bench_fused 90 $py tools/bench_fused.py --device cuda --batch 1 8 32 --rounds 15 --net-rounds 10 \
  --json "$logs/bench_fused_cuda.json"
step bench_net 220 $py tools/bench_net.py --device cuda --nets voc-fcn32s voc-fcn8s --batch 1 4 --repeats 10 \
  --train-repeats 5 --warmup 2 --json "$logs/bench_net_cuda.json"

$py - "$logs" "$out" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
logs, out = sys.argv[1:]
def load(name):
    path = os.path.join(logs, name)
    return json.load(open(path)) if os.path.exists(path) else None
report = {"machine": open(os.path.join(logs, "machine.log")).read(),
          "steps": [json.loads(line) for line in open(os.path.join(logs, "steps.jsonl"))],
          "bench_fused": load("bench_fused_cuda.json"), "bench_net": load("bench_net_cuda.json")}
xml = os.path.join(logs, "gpu_tests.xml")
if os.path.exists(xml):
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    report["gpu_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    report["gpu_tests"]["not_passed"] = {
        f"{case.get('classname')}::{case.get('name')}": (bad.get("message") or "")[:2000]
        for case in suite.iter("testcase") for bad in case if bad.tag in ("failure", "error")}
json.dump(report, open(os.path.join(out, "device_check.json"), "w"), indent=1)
with open(os.path.join(out, "README_tables.md"), "w") as fh:
    for title, b in (("The fused skip op, CUDA", report["bench_fused"]), ("Whole nets, CUDA", report["bench_net"])):
        if b:
            fh.write(f"### {title} ({b['meta'].get('gpu') or b['meta'].get('machine')})\n\n{b['table']}\n\n")
print(json.dumps(report["steps"]), report.get("gpu_tests"))
PY
tar -czf "$out/logs.tar.gz" -C "$logs" .
echo "device_check: wrote device_check.json, README_tables.md and logs.tar.gz to $out"
exit "$failed"
