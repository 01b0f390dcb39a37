"""Benchmark whole FCN nets: the plain path, the fast mode (fcn_caffe_repro/fast/) in float32 and in
bfloat16, and OpenCV's dnn module (what a user with a .caffemodel and no Caffe runs instead).

For each net (full width, random He-scaled weights, bilinear `up` layers via surgery.interp so the
fused skip op runs depthwise), batch, pass (forward under no_grad; forward+backward of the train
net's loss) and path, one fresh subprocess builds the net, runs it `--warmup` times, then
`--repeats` (forward) or `--train-repeats` (forward+backward) timed times. Paths:
  plain     the CaffeNet as built
  fast      net.optimize(): float32 (fast.for_inference, as `fcn eval` and `fcn infer` run by default)
  bf16      net.optimize(dtype=torch.bfloat16): bfloat16 activations, float32 scores (forward only)
  opencv    cv2.dnn.readNetFromCaffe on our prototxt and our writer's .caffemodel of the same net
            (written to a temporary folder, deleted once read), cv2.setNumThreads(--threads);
            forward only; its scores are compared with the plain path's in the same process.
            OpenCV is optional: without it the rows are left out and the run says why
The table reports:
  time      median of the timed runs
  GFLOP/s   fcr.flops(net).total (Caffe's count, forward; x3 for forward+backward) / time
  x mm      that rate over torch.mm's on 4096^2 float32: the best rate measured in the run (by
            the driver before and after, and by every configuration's process just before its
            net runs, median of 3 each). The best, because this shared VM's speed drifts by up to
            2x over minutes: a configuration that met a slow moment has its own rate in the
            "mm GFLOP/s" column, and dividing by it would flatter the net
  peak      CPU: peak RSS of the process over the timed runs (VmHWM, reset after the warm-up),
            and "net" = that peak minus the RSS after imports, before the net was built
            (weights + prepacked copies + activations + allocator slack); CUDA: max_memory_allocated
Throughput (--stream N, default 8): images/s of each path over N images of VOC's sizes (long side
500, short side 333 to 375, two in three landscape; seeded) at native size, one at a time, after
one warm-up image, on the first of --nets: the evaluation workload.
Each configuration runs in its own process so that peaks do not mix. Prints markdown tables and
the issue's checks, and writes JSON.

    fcn bench net                  # 4 nets; forward at batch 1 and 4, forward+backward at batch 1
    fcn bench net --quick          # FCN-8s, batch 1, forward and forward+backward, and the stream
    fcn bench net --nets voc-fcn8s --batch 1 --passes fwd --threads 2   # the README's table
    fcn bench net --bf16-miou out/reproduce/stages/fcn8s/fcn8s.caffemodel   # bench/precision.py
    fcn bench net --bf16-caffe-ref tests/fixtures/caffe-ref/nets            # the same, caffe-ref nets

--device cuda runs the same on a GPU (TF32 off; plain and fast only); the README has its figures
from an H200 (tools/device_check.sh).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from . import opencv
from .. import torch_private
from ..fast import for_inference
from .common import ieee_float32_on_cuda, reset_peak, status_bytes, write_json

NETS = ("voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "voc-fcn-alexnet")
PATHS = ("plain", "fast", "bf16", "opencv")
INFERENCE_ONLY = ("bf16", "opencv")
PASSES = ("fwd", "fwd+bwd")
ROOFLINE_FRACTION = 0.85
MEMORY_FACTOR = 2.0


# --- the worker: one configuration in a fresh process ------------------------------------------------
def build(name, phase, batch, size, device, seed=0, width_divisor=1):
    """A net (full width unless width_divisor) with random He-scaled convolutions and bilinear
    upsampling layers, and random inputs of batch x C x size x size."""
    import fcn_caffe_repro as fcr
    from fcn_caffe_repro import layers as L
    from fcn_caffe_repro import surgery

    torch.manual_seed(seed)
    net = fcr.build_net(name, phase=phase, width_divisor=width_divisor)
    with torch.no_grad():
        for _, m in net.layer_modules():
            if isinstance(m, L.Convolution):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1)
    surgery.interp(net, surgery.upsampling_layers(net))
    net.to(device)
    inputs = {}
    for top, declared in net.inputs.items():
        shape = (batch, declared[1], size, size)
        if top == "label":
            inputs[top] = torch.randint(0, 21, shape, device=device).float()
        else:
            inputs[top] = torch.randn(shape, device=device) * 50
    return net, inputs


def stream_images(n, seed=0):
    """n random 1 x 3 x H x W images of VOC's sizes: long side 500, short side 333 to 375, two in
    three landscape (seeded)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        short = int(rng.integers(333, 376))
        h, w = (short, 500) if rng.random() < 2 / 3 else (500, short)
        images.append(torch.from_numpy(rng.standard_normal((1, 3, h, w), dtype=np.float32) * 50))
    return images


def runner(path, net, threads):
    """(forward(inputs), opencv net or None) for a path, the net prepared for it (on its device)."""
    if path == "opencv":
        cv = opencv.OpenCVNet(net, threads or torch.get_num_threads())
        return (lambda inputs: cv.run({k: v.numpy() for k, v in inputs.items()})), cv
    if path != "plain":
        for_inference(net, path)

    def forward(inputs):
        with torch.no_grad():
            return net(**inputs)
    return forward, None


def opencv_error(cv, net, inputs):
    """The largest difference between OpenCV's outputs and the plain path's over the largest score."""
    theirs = cv.run({k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        ours = net(**inputs)
    return max(float(np.abs(theirs[k] - ours[k].numpy()).max() / np.abs(ours[k].numpy()).max()) for k in ours)


def stream_worker(cfg):
    """Images/s of one path over the stream (stream_images) at native size, one image at a time."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    net, _ = build(cfg["net"], "deploy", 1, 500, "cpu", width_divisor=cfg.get("width_divisor", 1))
    forward, cv = runner(cfg["path"], net, cfg["threads"])
    images = stream_images(cfg["stream"] + 1, cfg["seed"])
    forward({"data": images[0]})  # warm-up: one image not counted
    times = []
    for x in images[1:]:
        t = time.perf_counter()
        forward({"data": x})
        times.append(time.perf_counter() - t)
    return dict(cfg, times=times, images_s=len(times) / sum(times),
                sizes=[list(x.shape[2:]) for x in images[1:]])


def worker(cfg):
    if cfg.get("stream"):
        return stream_worker(cfg)
    device = cfg["device"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if device == "cuda":
        ieee_float32_on_cuda()
    import fcn_caffe_repro as fcr
    from fcn_caffe_repro import fast

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss_import = status_bytes("VmRSS") if device == "cpu" else 0
    backward = cfg["pass"] == "fwd+bwd"
    net, inputs = build(cfg["net"], "train" if backward else "deploy", cfg["batch"], cfg["size"], device,
                        width_divisor=cfg.get("width_divisor", 1))
    cost = fcr.flops(net, {k: tuple(v.shape) for k, v in inputs.items()})
    shapes = net.shapes_for({k: tuple(v.shape) for k, v in inputs.items()})
    acts = sorted((4 * int(torch.Size(s).numel()) for s in shapes.values()), reverse=True)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    forward, cv = runner(cfg["path"], net, cfg["threads"])
    rss_built = status_bytes("VmRSS") if device == "cpu" else 0
    mm = mm_rate(device, repeats=3)  # this process, these conditions: the roofline of this row

    def run():
        if backward:
            net.zero_grad(set_to_none=True)
            net.objective(net(**inputs)).backward()
        else:
            forward(inputs)
        sync()

    for _ in range(cfg["warmup"]):
        run()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset = reset_peak() if device == "cpu" else True
    times = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak, net_mem = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_allocated()
    else:
        peak = status_bytes("VmHWM")
        net_mem = peak - rss_import
    paths = sorted({p for _, p in fast.describe(net)})
    calls = fast.calls(net)
    ran = sorted({k for c in calls.values() for k in c})
    extra = {}
    if cv is not None:  # after the timed runs: the peak is OpenCV's alone
        extra = dict(opencv_version=opencv.version(), opencv_rel_err=opencv_error(cv, net, inputs))
    return dict(cfg, **extra, times=times, median_s=statistics.median(times), mm_flops=mm, flops=cost.total,
                flops_fused=cost.total_fused, weights_bytes=weights, two_largest_activations_bytes=sum(acts[:2]),
                peak_bytes=peak, net_bytes=net_mem, rss_import_bytes=rss_import, rss_built_bytes=rss_built,
                peak_reset=reset, step_paths=paths, conv_paths_run=ran, buffers=fast.buffer_stats(net))


# --- the driver ---------------------------------------------------------------------------------------
def mm_rate(device, repeats=5, n=4096):
    """torch.mm on n x n float32: median FLOP/s over `repeats` runs after one warm-up."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def spawn(cfg):
    cmd = [sys.executable, "-m", __spec__.name, "--worker", json.dumps(cfg)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker failed for {cfg}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpuinfo(field):
    """The first value of `field` in Linux's /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((l.split(":", 1)[1].strip() for l in fh if l.startswith(field)), None)
    except OSError:
        return None


def machine():
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} logical CPUs"


def has_amx():
    """Whether this CPU has AMX for bfloat16 (the cpuinfo flag amx_bf16); False where unknown."""
    return "amx_bf16" in (_cpuinfo("flags") or "").split()


def _mb(b):
    return f"{b / 2**20:,.0f}"


def markdown(rows, mm):
    head = ("| net | batch | pass | path | time (s) | GFLOP/s | x mm | speed-up over plain | speed-up over OpenCV "
            "| peak RSS (MiB) | net memory (MiB) | budget 2x(W+2A) (MiB) | mm GFLOP/s in its process |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = {(r["net"], r["batch"], r["pass"], r["path"]): r["median_s"] for r in rows}
    for r in rows:
        work = r["flops"] * (3 if r["pass"] == "fwd+bwd" else 1)
        rate = work / r["median_s"]
        key = (r["net"], r["batch"], r["pass"])
        speed = [f"{base[key + (p,)] / r['median_s']:.2f}x" if key + (p,) in base else "" for p in ("plain", "opencv")]
        budget = MEMORY_FACTOR * (r["weights_bytes"] + r["two_largest_activations_bytes"])
        lines.append(f"| {r['net']} | {r['batch']} | {r['pass']} | {r['path']} | {r['median_s']:.3f} | "
                     f"{rate / 1e9:.0f} | {rate / mm:.2f} | {speed[0]} | {speed[1]} | {_mb(r['peak_bytes'])} | "
                     f"{_mb(r['net_bytes'])} | {_mb(budget) if r['pass'] == 'fwd' else ''} | {r['mm_flops'] / 1e9:.0f} |")
    return "\n".join(lines)


def stream_markdown(rows):
    head = "| net | path | images | images/s | s per image (median) | vs plain | vs OpenCV |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rate = {r["path"]: r["images_s"] for r in rows}
    for r in rows:
        vs = [f"{r['images_s'] / rate[p]:.2f}x" if p in rate else "" for p in ("plain", "opencv")]
        lines.append(f"| {r['net']} | {r['path']} | {len(r['times'])} | {r['images_s']:.3f} | "
                     f"{statistics.median(r['times']):.3f} | {vs[0]} | {vs[1]} |")
    return "\n".join(lines)


def checks(rows, mm):
    """Issue 8's targets for FCN-8s forward at batch 1, as lines of text."""
    get = {(r["net"], r["batch"], r["pass"], r["path"]): r for r in rows}
    fast, plain = get.get(("voc-fcn8s", 1, "fwd", "fast")), get.get(("voc-fcn8s", 1, "fwd", "plain"))
    out = []
    if fast:
        roof = fast["flops"] / mm
        limit = roof / ROOFLINE_FRACTION
        ok = fast["median_s"] <= limit
        out.append(f"- FCN-8s forward, batch 1, fast: {fast['median_s']:.3f} s; matmul roofline "
                   f"{fast['flops'] / 1e9:.1f} GFLOP / {mm / 1e9:.0f} GFLOP/s = {roof:.3f} s, at 85 % "
                   f"<= {limit:.3f} s: {'PASS' if ok else 'FAIL'} ({roof / fast['median_s']:.0%} of the roofline)")
        if plain:
            ahead = fast["median_s"] < plain["median_s"]
            out.append(f"- ahead of the plain path in the same run ({plain['median_s']:.3f} s): "
                       f"{'PASS' if ahead else 'FAIL'}")
        budget = MEMORY_FACTOR * (fast["weights_bytes"] + fast["two_largest_activations_bytes"])
        out.append(f"- peak memory of that forward: {_mb(fast['net_bytes'])} MiB above the process's "
                   f"{_mb(fast['rss_import_bytes'])} MiB after imports ({_mb(fast['peak_bytes'])} MiB RSS in all); "
                   f"budget 2 x (weights {_mb(fast['weights_bytes'])} + two largest activations "
                   f"{_mb(fast['two_largest_activations_bytes'])}) = {_mb(budget)} MiB: "
                   f"{'PASS' if fast['net_bytes'] <= budget else 'FAIL'} (whole RSS: "
                   f"{'PASS' if fast['peak_bytes'] <= budget else 'FAIL'})")
    bf16, cv = get.get(("voc-fcn8s", 1, "fwd", "bf16")), get.get(("voc-fcn8s", 1, "fwd", "opencv"))
    if bf16 and fast:
        ratio = fast["median_s"] / bf16["median_s"]
        out.append(f"- FCN-8s forward, batch 1, bfloat16: {bf16['median_s']:.3f} s, {ratio:.2f}x the float32 fast "
                   f"mode ({'faster' if ratio > 1 else 'slower'}); >= 2x (on a CPU with AMX): "
                   f"{('PASS' if ratio >= 2 else 'FAIL') if has_amx() else 'not applicable, this CPU has no AMX'}")
    if cv:
        out.append(f"- OpenCV {cv['opencv_version']} dnn: {cv['median_s']:.3f} s; its scores differ from the plain "
                   f"path's by at most {cv['opencv_rel_err']:.1e} of the largest score")
        for r, want in ((bf16, 3.0), (fast, 1.5)):
            if r:
                ratio = cv["median_s"] / r["median_s"]
                out.append(f"- {r['path']} vs OpenCV: {ratio:.2f}x, >= {want}x: {'PASS' if ratio >= want else 'FAIL'}")
    for batch in sorted({r["batch"] for r in rows}):
        f, p = get.get(("voc-fcn32s", batch, "fwd+bwd", "fast")), get.get(("voc-fcn32s", batch, "fwd+bwd", "plain"))
        if f and p:
            out.append(f"- FCN-32s forward+backward, batch {batch}: fast mode {1 / f['median_s']:.3f} it/s, "
                       f"plain {1 / p['median_s']:.3f} it/s")
    return "\n".join(out)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each worker (default: torch's)")
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batches of the forward pass")
    p.add_argument("--train-batch", type=int, nargs="+", default=[1],
                   help="batches of the forward+backward pass (default 1: batch 4 adds ~7 minutes)")
    p.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--repeats", type=int, default=3, help="timed forward runs per configuration (median reported)")
    p.add_argument("--train-repeats", type=int, default=2,
                   help="timed forward+backward runs per configuration (median; 2 keeps the run < 10 min)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", type=int, default=500, help="input height and width")
    p.add_argument("--width-divisor", type=int, default=1, help="narrower nets (checks of the benchmark itself)")
    p.add_argument("--quick", action="store_true", help="voc-fcn8s, batch 1 only")
    p.add_argument("--stream", type=int, default=8,
                   help="images of the throughput stream, on the first net (0: no throughput table)")
    p.add_argument("--stream-seed", type=int, default=0)
    p.add_argument("--bf16-miou", metavar="WEIGHTS",
                   help="only this: FCN-8s mean IU in bfloat16 vs float32 on the main job's held-out images "
                        "with these weights (bench/precision.py)")
    p.add_argument("--limit", type=int, default=None, help="with --bf16-miou: score only the first N images")
    p.add_argument("--bf16-caffe-ref", metavar="DIR",
                   help="only this: bfloat16 vs float32 argmax agreement and score error on the caffe-ref nets "
                        "in DIR (tests/fixtures/caffe-ref/nets)")
    p.add_argument("--json", default=None, help="default bench/bench_net_DEVICE.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def precision_only(args):
    """--bf16-miou / --bf16-caffe-ref: bfloat16's accuracy cost, no timing."""
    from . import precision
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16_caffe_ref:
        rows = precision.caffe_ref(args.bf16_caffe_ref)
        print(precision.caffe_ref_report(rows))
    if args.bf16_miou:
        result = precision.bf16_miou(args.bf16_miou, limit=args.limit)
        print(precision.report(result))
    if args.json:
        write_json(args.json, dict(weights=args.bf16_miou, miou=result if args.bf16_miou else None,
                                   caffe_ref=rows if args.bf16_caffe_ref else None))


def measure(args):
    """Every configuration, each in a fresh process: the timing rows, then the throughput stream."""
    rows = []
    for net in args.nets:
        for pss in args.passes:
            for batch in args.train_batch if pss == "fwd+bwd" else args.batch:
                for path in args.paths:
                    if pss == "fwd+bwd" and path in INFERENCE_ONLY:
                        continue
                    cfg = dict(net=net, batch=batch, path=path, device=args.device, threads=args.threads,
                               repeats=args.train_repeats if pss == "fwd+bwd" else args.repeats,
                               warmup=args.warmup, size=args.size, width_divisor=args.width_divisor)
                    cfg["pass"] = pss
                    r = spawn(cfg)
                    rows.append(r)
                    print(f"  {net} batch {batch} {pss} {path}: {r['median_s']:.3f} s "
                          f"(runs {', '.join(f'{t:.3f}' for t in r['times'])}), peak {_mb(r['peak_bytes'])} MiB",
                          file=sys.stderr)
    stream = []
    if args.stream and args.device == "cpu":
        for path in args.paths:
            r = spawn(dict(net=args.nets[0], path=path, device="cpu", threads=args.threads, stream=args.stream,
                           seed=args.stream_seed, width_divisor=args.width_divisor))
            stream.append(r)
            print(f"  stream of {args.stream} on {args.nets[0]} {path}: {r['images_s']:.3f} images/s", file=sys.stderr)
    return rows, stream


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.bf16_miou or args.bf16_caffe_ref:
        precision_only(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.device == "cuda":
        args.paths = [q for q in args.paths if q in ("plain", "fast")]
    if args.quick:
        args.nets, args.batch, args.train_batch = ["voc-fcn8s"], [1], [1]
    cv_problem = opencv.problem() if "opencv" in args.paths else None
    if cv_problem:
        print(f"no OpenCV rows: {cv_problem}", file=sys.stderr)
        args.paths = [q for q in args.paths if q != "opencv"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        ieee_float32_on_cuda()
    load = os.getloadavg()[0]
    started = time.time()
    mm_before = mm_rate(args.device)
    print(f"torch.mm 4096^2: {mm_before / 1e9:.0f} GFLOP/s", file=sys.stderr)
    rows, stream = measure(args)
    mm_after = mm_rate(args.device)
    mm = max([mm_before, mm_after] + [r["mm_flops"] for r in rows])
    table = markdown(rows, mm)
    stream_table = stream_markdown(stream) if stream else ""
    summary = checks(rows, mm)
    meta = dict(device=args.device, machine=machine(), torch=torch.__version__,
                gpu=torch.cuda.get_device_name() if args.device == "cuda" else None,
                threads=args.threads or torch.get_num_threads(), size=args.size, repeats=args.repeats,
                train_repeats=args.train_repeats, warmup=args.warmup, mm_flops_before=mm_before,
                mm_flops_after=mm_after, mm_flops=mm,
                load_before=load, load_after=os.getloadavg()[0], bf16_native=torch_private.onednn_bf16_supported(),
                wall_s=time.time() - started,
                command=" ".join(["fcn", "bench", "net", *(sys.argv[1:] if argv is None else argv)]))
    print(f"{meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, {args.size}x{args.size} "
          f"input (bf16: bfloat16 activations, float32 scores), bfloat16 native in oneDNN here: "
          f"{meta['bf16_native']}; median of {args.repeats} forward / {args.train_repeats} forward+backward runs after {args.warmup} warm-up, "
          f"each configuration in a fresh process; "
          f"torch.mm 4096^2 in the driver: {mm_before / 1e9:.0f} GFLOP/s before, {mm_after / 1e9:.0f} after "
          f"and {min(r['mm_flops'] for r in rows) / 1e9:.0f} to {max(r['mm_flops'] for r in rows) / 1e9:.0f} "
          f"in the configurations' processes; x mm and the roofline use the best, {mm / 1e9:.0f}; "
          f"load average {load:.2f} before, {meta['load_after']:.2f} after\n")
    print(table)
    if stream:
        print(f"\nThroughput: {args.stream} images of VOC's sizes at native size, one at a time, "
              f"{meta['threads']} threads (seed {args.stream_seed}):\n")
        print(stream_table)
    if cv_problem:
        print(f"\nno OpenCV rows: {cv_problem}")
    print()
    print(summary)
    path = args.json or os.path.join("bench", f"bench_net_{args.device}.json")
    write_json(path, dict(meta=meta, rows=rows, table=table, stream=stream, stream_table=stream_table,
                          checks=summary, opencv_problem=cv_problem))
    print(f"\nwrote {path} in {meta['wall_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
