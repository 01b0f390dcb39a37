"""Benchmark: parse a 50 MB prototxt, time and peak memory as a multiple of the file size.

Generates two files in a temporary folder (deleted after): a net of many small layers as Caffe
prints them (the common case), and one quoted string of the whole size (the worst case of the old
reader). Each is parsed by `prototxt.load` in a fresh subprocess, which reports the parse time and
its peak resident memory above the resident memory before the parse (VmHWM after clear_refs).

    fcn bench prototxt [--mb 50] [--json out.json]
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import reset_peak, status_bytes, write_json

LAYER = ('layer {{\n  name: "relu{i}"\n  type: "ReLU"\n  bottom: "conv{i}"\n  top: "conv{i}"\n'
         '  relu_param {{\n    negative_slope: 0.1\n  }}\n}}\n')


def make_files(folder, size):
    layers = Path(folder) / "layers.prototxt"
    with open(layers, "w") as f:
        n, i = 0, 0
        while n < size:
            n += f.write(LAYER.format(i=i))
            i += 1
    string = Path(folder) / "string.prototxt"
    string.write_text('name: "' + "x" * (size - 10) + '"\n')
    return {"layers": (layers, i), "string": (string, 1)}


def measure(path):
    """Run in a fresh process: parse `path`, print wall and CPU seconds, the peak resident memory
    above the resident memory before the parse, and the top-level field count."""
    import gc

    from ..caffe import prototxt

    gc.collect()
    reset_peak()
    base = status_bytes("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    msg = prototxt.load(path)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    print(t, c, status_bytes("VmHWM") - base, len(msg.fields))


def parse(path):
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--measure", str(path)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50, help="file size in MB (default 50)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the subprocess side
    args = ap.parse_args(argv)
    if args.measure:
        measure(args.measure)
        return 0
    size = int(args.mb * 1e6)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, (path, count) in make_files(folder, size).items():
            nbytes = path.stat().st_size
            seconds, cpu_seconds, peak = parse(path)
            rows.append({"file": kind, "bytes": nbytes, "layers": count if kind == "layers" else 0, "seconds": seconds,
                         "cpu_seconds": cpu_seconds, "peak_bytes": peak, "peak_x_file": peak / nbytes})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    from ..caffe import prototxt

    reader = "the C fast path" if prototxt.FAST_PATH else "the Python parser (caffe/_prototxt_fast not built)"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores, load average {load:.1f}), Python {platform.python_version()}, "
          f"reader: {reader}\n")
    print("| file | size | layers | parse time (CPU time) | peak memory | peak / file size |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['file']} | {r['bytes'] / 1e6:.1f} MB | {r['layers']} | {r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s) | "
              f"{r['peak_bytes'] / 1e6:.0f} MB | {r['peak_x_file']:.1f}x |")
    if args.json:
        write_json(args.json, {"cpu": cpu_model(), "load_average": load, "fast_path": prototxt.FAST_PATH, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
