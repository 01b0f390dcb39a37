"""Benchmark the fused deconvolution-crop-sum op on FCN-8s's three head calls.

For each call (at a 500x500 input, batch 1 and 8), forward and forward+backward, it times side by
side, in interleaved rounds of one run:
  fused   fcn_caffe_repro.ops.deconv_crop_sum with the diagonal weights as groups=C
  caffe   what Caffe computes: full CxC conv_transpose2d + slice + add
  plain   the best plain PyTorch: depthwise conv_transpose2d + slice + add
  interp  F.interpolate(bilinear) to the same size (+ the skip): a speed reference only
A fifth timing, "floor", allocates and writes a tensor of the output's size (torch.empty +
fill_): no path can beat it, and on machines where fresh memory is expensive to fault in, it
dominates the large calls.  It reports achieved GB/s of the fused op for the bytes it must move against the machine's copy
bandwidth (a large tensor copy_) measured in the same run, and each path's peak memory (CPU: the
rise of peak RSS in a subprocess where malloc returns freed blocks at once; CUDA: the allocator's
peak).  A second section times the whole full-width FCN-8s forward (random weights, bilinear
upsampling) with its three upsampling steps unfused (the CaffeNet as built) and fused
(net.fuse()), interleaved on one net.  Prints markdown tables and writes JSON.
--keep-freed-memory reruns it with glibc keeping freed memory, so that no path pays first-touch
page faults for its fresh outputs (which the copy-bandwidth figure, into a reused buffer, does not).

    fcn bench fused --device cpu [--batch 1 8] [--rounds 15] [--net-rounds 5] [--json out.json]
                                [--keep-freed-memory]
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from .. import ops
from ..layers import bilinear_kernel
from .common import ieee_float32_on_cuda, reset_peak, status_bytes, write_json
from .net import build  # the full-width net with random weights

METHODS = ("fused", "caffe", "plain", "interp")
# --keep-freed-memory: glibc malloc keeps freed memory and serves blocks up to 1 GiB from its heap
# (by default blocks over 32 MiB are fresh mappings, faulted in page by page on every call).
KEEP_HEAP = {"MALLOC_TRIM_THRESHOLD_": "4294967295", "MALLOC_MMAP_THRESHOLD_": "1073741824"}


def fcn8s_head_calls(size=500, classes=21):
    """The three Deconvolution(-Crop-Eltwise) calls of voc-fcn8s at a size x size input.

    Spatial sizes follow the prototxt: conv1_1 pads 100, 3x3 convs keep size, five 2x2/2 max
    pools round up (Caffe), fc6 is 7x7 unpadded; the crop offsets 5, 9, 31 are the prototxt's.
    """
    s = size + 2 * 100 - 2
    pools = []
    for _ in range(5):
        s = math.ceil((s - 2) / 2) + 1
        pools.append(s)
    score_fr = pools[4] - 6
    up2 = (score_fr - 1) * 2 + 4
    up4 = (up2 - 1) * 2 + 4
    return [
        dict(name="upscore2+score_pool4", x=score_fr, k=4, s=2, skip=pools[3], skip_offset=5, offset=0, out=up2),
        dict(name="upscore_pool4+score_pool3", x=up2, k=4, s=2, skip=pools[2], skip_offset=9, offset=0, out=up4),
        dict(name="upscore8 crop", x=up4, k=16, s=8, skip=None, skip_offset=0, offset=31, out=size),
    ]


def make_inputs(call, batch, classes, device, grad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, classes, call["x"], call["x"], generator=g).to(device)
    skip = None
    if call["skip"] is not None:
        skip = torch.randn(batch, classes, call["skip"], call["skip"], generator=g).to(device)
    filt = torch.from_numpy(bilinear_kernel(call["k"])).to(device)
    w_dw = filt.expand(classes, 1, -1, -1).contiguous()
    w_full = torch.zeros(classes, classes, call["k"], call["k"], device=device)
    w_full[range(classes), range(classes)] = filt
    if grad:
        x.requires_grad_(True)
        if skip is not None:
            skip.requires_grad_(True)
    return x, skip, w_dw, w_full


def leaves(x, skip):
    return (x,) if skip is None else (x, skip)


def method_fn(method, call, x, skip, w_dw, w_full):
    """A zero-argument callable running one path of the call."""
    s, o, so, n = call["s"], call["offset"], call["skip_offset"], call["out"]
    classes = x.shape[1]

    def crop_add(full):
        out = full[:, :, o:o + n, o:o + n]
        return out.contiguous() if skip is None else out + skip[:, :, so:so + n, so:so + n]

    if method == "fused":
        return lambda: ops.deconv_crop_sum(x, w_dw, s, o, (n, n), skip, so, groups=classes)
    if method == "caffe":
        return lambda: crop_add(F.conv_transpose2d(x, w_full, stride=s))
    if method == "plain":
        return lambda: crop_add(F.conv_transpose2d(x, w_dw, stride=s, groups=classes))
    if method == "interp":
        def interp():
            up = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)
            return up if skip is None else up + skip[:, :, so:so + n, so:so + n]
        return interp
    raise ValueError(method)


def with_backward(fn, grad_out, inputs):
    """Forward, then the gradients of x and skip: torch.autograd.grad, because in a net they are
    activations whose gradients flow on, not leaves that accumulate into .grad."""
    def run():
        torch.autograd.grad(fn(), inputs, grad_out)
    return run


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device, rounds, mib=256):
    """Bytes read + written per second by a large tensor copy_ (GB/s)."""
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(max(5, rounds // 2)):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def bytes_moved(call, batch, classes, backward):
    """The bytes the fused op must read and write (float32)."""
    n, xs = call["out"], call["x"]
    out = batch * classes * n * n
    xin = batch * classes * xs * xs
    skip_crop = out if call["skip"] is not None else 0
    total = xin + skip_crop + out  # read x and the skip's crop, write the output
    if backward:  # read grad, write grad_x and the whole grad_skip
        total += out + xin + (batch * classes * call["skip"] ** 2 if call["skip"] is not None else 0)
    return 4 * total


def calls_per_block(fn, device, block_s=2e-3):
    """How many back-to-back calls make one timed block of about block_s: sub-millisecond calls are
    timed in loops (like timeit's autorange) so the timer and one-off cache misses do not count."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return max(1, min(1000, int(block_s / max(time.perf_counter() - t, 1e-7))))


def time_methods(fns, device, rounds):
    """Median seconds per call of each method; rounds interleaved so all paths see the same load."""
    for fn in fns.values():
        for _ in range(2):
            fn()
    number = {m: calls_per_block(fn, device) for m, fn in fns.items()}
    times = {m: [] for m in fns}
    order = list(fns)
    for r in range(rounds):
        for m in order[r % len(order):] + order[:r % len(order)]:
            fn = fns[m]
            sync(device)
            t = time.perf_counter()
            for _ in range(number[m]):
                fn()
            sync(device)
            times[m].append((time.perf_counter() - t) / number[m])
    return {m: statistics.median(v) for m, v in times.items()}


def peak_memory_cuda(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def peak_memory_cpu_here(fn):
    """Rise of peak RSS over one call (Linux; needs malloc to unmap freed blocks, see main)."""
    fn()
    if not reset_peak():
        raise OSError("cannot reset the peak RSS (/proc/self/clear_refs)")
    base = status_bytes("VmRSS")
    fn()
    return status_bytes("VmHWM") - base


def peak_memory_cpu(batches):
    """Runs the memory pass in a subprocess with MALLOC_MMAP_THRESHOLD_=64k, so every large
    buffer is mapped when allocated and unmapped when freed, and RSS follows live memory."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", __spec__.name, "--memory-pass", "--threads", str(torch.get_num_threads()),
           "--batch", *map(str, batches)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return {tuple(json.loads(k)): v for k, v in json.loads(out).items()}
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        print(f"peak memory not measured: {exc}", file=sys.stderr)
        return {}


def memory_pass(batches, classes=21):
    result = {}
    for call in fcn8s_head_calls(classes=classes):
        for batch in batches:
            for backward in (False, True):
                x, skip, w_dw, w_full = make_inputs(call, batch, classes, "cpu", backward)
                grad = torch.randn(batch, classes, call["out"], call["out"]) if backward else None
                for m in METHODS:
                    fn = method_fn(m, call, x, skip, w_dw, w_full)
                    fn = with_backward(fn, grad, leaves(x, skip)) if backward else fn
                    result[json.dumps([call["name"], batch, backward, m])] = peak_memory_cpu_here(fn)
    print(json.dumps(result))


def check_agreement(call, x, skip, w_dw, w_full):
    """The fused, Caffe and plain paths compute the same thing; stop if they do not."""
    with torch.no_grad():
        ref = method_fn("caffe", call, x, skip, w_dw, w_full)()
        for m in ("fused", "plain"):
            got = method_fn(m, call, x, skip, w_dw, w_full)()
            if not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"{call['name']}: {m} differs from caffe by {(got - ref).abs().max():.3g}")


def bench_head_calls(device, batches, rounds, copy_gbs, classes=21):
    rows = []
    for call in fcn8s_head_calls(classes=classes):
        for batch in batches:
            for backward in (False, True):
                x, skip, w_dw, w_full = make_inputs(call, batch, classes, device, backward)
                check_agreement(call, x, skip, w_dw, w_full)
                grad = torch.randn(batch, classes, call["out"], call["out"], device=device) if backward else None
                fns = {}
                for m in METHODS:
                    fn = method_fn(m, call, x, skip, w_dw, w_full)
                    fns[m] = with_backward(fn, grad, leaves(x, skip)) if backward else fn
                shape = (batch, classes, call["out"], call["out"])
                fns["floor"] = lambda: torch.empty(shape, device=device).fill_(0)
                t = time_methods(fns, device, rounds)
                moved = bytes_moved(call, batch, classes, backward)
                row = dict(call=call["name"], batch=batch, mode="fwd+bwd" if backward else "fwd",
                           ms={m: 1e3 * t[m] for m in (*METHODS, "floor")},
                           caffe_over_fused=t["caffe"] / t["fused"], plain_over_fused=t["plain"] / t["fused"],
                           interp_over_fused=t["interp"] / t["fused"],
                           fused_gbs=moved / t["fused"] / 1e9, bytes_moved=moved)
                row["fused_pct_copy_bw"] = 100 * row["fused_gbs"] / copy_gbs
                if device == "cuda":
                    row["peak_mb"] = {m: peak_memory_cuda(fns[m]) / 2**20 for m in METHODS}
                rows.append(row)
                print(f"  {row['call']} batch {batch} {row['mode']}: fused {row['ms']['fused']:.3f} ms, "
                      f"caffe x{row['caffe_over_fused']:.1f}, plain x{row['plain_over_fused']:.1f}", file=sys.stderr)
    return rows


def bench_whole_net(device, rounds, size=500):
    """Full-width FCN-8s forward at 1x3xsize x size, unfused vs fused, rounds interleaved."""
    net, inputs = build("voc-fcn8s", "deploy", 1, size, device)
    net.eval()
    times, outs = {"unfused": [], "fused": []}, {}
    with torch.no_grad():
        for r in range(rounds + 1):  # round 0 warms up and keeps the outputs
            for mode in (("unfused", "fused") if r % 2 == 0 else ("fused", "unfused")):
                net.fuse(mode == "fused")
                sync(device)
                t = time.perf_counter()
                out = net(**inputs)["score"]
                sync(device)
                if r == 0:
                    outs[mode] = out
                else:
                    times[mode].append(time.perf_counter() - t)
    err = ((outs["fused"] - outs["unfused"]).abs().max() / outs["unfused"].abs().max()).item()
    if err > 1e-5:
        raise SystemExit(f"whole net: the fused FCN-8s differs from the unfused one by {err:.3g} (relative)")
    s = {m: statistics.median(v) for m, v in times.items()}
    return dict(net="voc-fcn8s", size=size, rounds=rounds, unfused_s=s["unfused"], fused_s=s["fused"],
                speedup=s["unfused"] / s["fused"], max_rel_diff=err)


def markdown_whole_net(r):
    return ("| net | input | unfused s | fused s | speed-up | max relative difference |\n|---|---|---|---|---|---|\n"
            f"| {r['net']} (full width) | 1x3x{r['size']}x{r['size']} | {r['unfused_s']:.3f} | {r['fused_s']:.3f} | "
            f"{r['speedup']:.2f}x | {r['max_rel_diff']:.1e} |\n\nForward, no_grad, medians of {r['rounds']} "
            "interleaved rounds on one net (net.fuse(False) / net.fuse()).")


def markdown(rows, copy_gbs):
    head = ("| call | batch | mode | fused ms | caffe ms | plain ms | interp ms | floor ms | caffe/fused | plain/fused "
            "| fused GB/s | % of copy BW | peak MB fused / caffe / plain / interp |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ms = r["ms"]
        peak = " / ".join(f"{r['peak_mb'][m]:.1f}" for m in METHODS) if "peak_mb" in r else "n/a"
        lines.append(f"| {r['call']} | {r['batch']} | {r['mode']} | {ms['fused']:.3f} | {ms['caffe']:.3f} | "
                     f"{ms['plain']:.3f} | {ms['interp']:.3f} | {ms['floor']:.3f} | {r['caffe_over_fused']:.1f}x | "
                     f"{r['plain_over_fused']:.1f}x | {r['fused_gbs']:.1f} | {r['fused_pct_copy_bw']:.0f}% | {peak} |")
    lines.append(f"\nCopy bandwidth (256 MiB copy_, read + write): {copy_gbs:.1f} GB/s. floor: torch.empty + "
                 "fill_ of the output's size. Times are medians of interleaved rounds, per call (calls under 2 ms "
                 "timed in back-to-back loops of about 2 ms).")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per path (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--net-rounds", type=int, default=5, help="whole-net FCN-8s rounds (0: skip that section)")
    p.add_argument("--json", default=None, help="where to write the JSON (default bench/bench_fused_DEVICE.json)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="rerun under glibc settings that keep freed memory in the heap (MALLOC_TRIM_THRESHOLD_, "
                        "MALLOC_MMAP_THRESHOLD_), so that no path pays page faults for fresh outputs")
    p.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.keep_freed_memory and os.environ.get("MALLOC_TRIM_THRESHOLD_") != KEEP_HEAP["MALLOC_TRIM_THRESHOLD_"]:
        # glibc reads these at start-up only: run this script again under them.
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *(sys.argv[1:] if argv is None else argv)],
                  dict(os.environ, **KEEP_HEAP))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_pass:
        return memory_pass(args.batch)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.device == "cuda":
        ieee_float32_on_cuda()
    if not ops.extension_available():
        raise SystemExit("fcn_caffe_repro._C is not built: pip install --no-build-isolation --no-deps -e .")

    copy_gbs = copy_bandwidth(args.device, args.rounds)
    rows = bench_head_calls(args.device, args.batch, args.rounds, copy_gbs)
    if args.device == "cpu":
        peaks = peak_memory_cpu(args.batch)
        for r in rows:
            if peaks:
                r["peak_mb"] = {m: peaks[(r["call"], r["batch"], r["mode"] == "fwd+bwd", m)] / 2**20 for m in METHODS}
    table = markdown(rows, copy_gbs)
    whole = bench_whole_net(args.device, args.net_rounds) if args.net_rounds > 0 else None
    if whole:
        table += "\n\n" + markdown_whole_net(whole)
    print(table)
    meta = dict(device=args.device, torch=torch.__version__, threads=torch.get_num_threads(),
                machine=platform.processor() or platform.machine(),
                gpu=torch.cuda.get_device_name() if args.device == "cuda" else None,
                rounds=args.rounds, copy_gbs=copy_gbs, thp_alloc=os.environ.get("THP_MEM_ALLOC_ENABLE"),
                heap="kept" if args.keep_freed_memory else "system", command=" ".join(["fcn", "bench", "fused", *sys.argv[1:]]))
    path = args.json or os.path.join("bench", f"bench_fused_{args.device}.json")
    write_json(path, dict(meta=meta, rows=rows, whole_net=whole, table=table))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
