"""Benchmark: read a full-size voc-fcn8s .caffemodel (~540 MB) and convert it to a torch state_dict.

Writes a random caffemodel with the VGG16 FCN-8s layer shapes (21 classes; Deconvolution layers
without bias, as in the release's net.py) to a temporary folder, evicts it from the page cache
(posix_fadvise DONTNEED, so reads start cold), then in a fresh subprocess times `caffemodel.read`,
the zero-copy conversion to `{layer.weight, layer.bias}` tensors, and a first pass over every
tensor (which pages the file in), with the peak resident memory of each stage. Prints a markdown
table, optionally writes JSON, and deletes the file.

    fcn bench convert [--dir DIR] [--json out.json]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..caffe import caffemodel
from .common import reset_peak, status_bytes

C = 21
VGG = [("conv1_1", 64, 3), ("conv1_2", 64, 64), ("conv2_1", 128, 64), ("conv2_2", 128, 128),
       ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv4_1", 512, 256),
       ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv5_1", 512, 512), ("conv5_2", 512, 512),
       ("conv5_3", 512, 512)]


def fcn8s_layers():
    """(name, type, weight shape, has bias) of voc-fcn8s, in prototxt order."""
    layers = [(name, "Convolution", (out, inp, 3, 3), True) for name, out, inp in VGG]
    layers += [("fc6", "Convolution", (4096, 512, 7, 7), True), ("fc7", "Convolution", (4096, 4096, 1, 1), True),
               ("score_fr", "Convolution", (C, 4096, 1, 1), True),
               ("upscore2", "Deconvolution", (C, C, 4, 4), False),
               ("score_pool4", "Convolution", (C, 512, 1, 1), True),
               ("upscore_pool4", "Deconvolution", (C, C, 4, 4), False),
               ("score_pool3", "Convolution", (C, 256, 1, 1), True),
               ("upscore8", "Deconvolution", (C, C, 16, 16), False)]
    return layers


def write_model(path):
    from tqdm import tqdm

    rng = np.random.default_rng(0)
    layers = {}
    for name, ltype, shape, bias in fcn8s_layers():
        blobs = [rng.standard_normal(shape, np.float32)]
        if bias:
            blobs.append(rng.standard_normal(shape[0], np.float32))
        layers[name] = (ltype, blobs)
    total = sum(b.nbytes for _, blobs in layers.values() for b in blobs)
    start = time.perf_counter()
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing") as bar:
        caffemodel.write(path, layers, name="voc-fcn8s", progress=bar.update)
    seconds = time.perf_counter() - start
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold cache for the measurement
    finally:
        os.close(fd)
    return seconds


def measure(path):
    """Run in a fresh process: time read, convert and a first pass; peak RSS in MiB per stage."""
    import torch

    mb = 1 / 2**20
    out = {"baseline_rss_mb": status_bytes("VmRSS") * mb, "peak_reset": reset_peak()}
    start = time.perf_counter()
    layers = caffemodel.read(path)
    out["read_s"] = time.perf_counter() - start
    out["read_peak_mb"] = status_bytes("VmHWM") * mb

    start = time.perf_counter()
    state = {}
    for name, blobs in layers.items():
        for suffix, blob in zip(("weight", "bias"), blobs):
            state[f"{name}.{suffix}"] = torch.from_numpy(blob)
    out["convert_s"] = time.perf_counter() - start
    out["convert_peak_mb"] = status_bytes("VmHWM") * mb
    out["zero_copy"] = sum(state[f"{n}.{s}"].data_ptr() == b.ctypes.data
                           for n, blobs in layers.items() for s, b in zip(("weight", "bias"), blobs))
    out["tensors"] = len(state)
    out["unaligned"] = sum(t.data_ptr() % 4 != 0 for t in state.values())

    start = time.perf_counter()
    checksum = sum(float(t.sum()) for t in state.values())  # reads every element, allocates nothing big
    out["first_pass_s"] = time.perf_counter() - start
    out["first_pass_peak_mb"] = status_bytes("VmHWM") * mb
    out["checksum"] = checksum
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="folder for the temporary caffemodel (default: the system temp folder)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the subprocess side
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_convert_") as folder:
        path = os.path.join(folder, "voc-fcn8s-random.caffemodel")
        write_s = write_model(path)
        size = os.path.getsize(path)
        proc = subprocess.run([sys.executable, "-m", __spec__.name, "--measure", path], check=True,
                              capture_output=True, text=True)
        fig = json.loads(proc.stdout.strip().splitlines()[-1])
    size_mb = size / 2**20  # MiB, as RSS
    fig.update(file_mb=size_mb, write_s=write_s, cores=os.cpu_count(), python=platform.python_version(),
               numpy=np.__version__, torch=__import__("torch").__version__, cache="cold (posix_fadvise DONTNEED)")
    fig["peak_mb"] = max(fig["read_peak_mb"], fig["convert_peak_mb"])
    fig["peak_over_file"] = fig["peak_mb"] / size_mb
    fig["peak_minus_baseline_over_file"] = (fig["peak_mb"] - fig["baseline_rss_mb"]) / size_mb
    fig["first_pass_peak_over_file"] = fig["first_pass_peak_mb"] / size_mb

    print(f"\nvoc-fcn8s random caffemodel, {fig['cores']} cores, {fig['cache']} cache, "
          f"{fig['zero_copy']}/{fig['tensors']} tensors zero-copy ({fig['unaligned']} unaligned)\n")
    print("| file MiB | write s | read s | convert s | peak RSS MiB (read+convert) | ratio to file "
          "| baseline RSS MiB | first pass s | peak RSS MiB after first pass | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {size_mb:.1f} | {write_s:.2f} | {fig['read_s']:.3f} | {fig['convert_s']:.4f} | {fig['peak_mb']:.0f} "
          f"| {fig['peak_over_file']:.2f} | {fig['baseline_rss_mb']:.0f} | {fig['first_pass_s']:.2f} "
          f"| {fig['first_pass_peak_mb']:.0f} | {fig['first_pass_peak_over_file']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2) + "\n")


if __name__ == "__main__":
    main()
