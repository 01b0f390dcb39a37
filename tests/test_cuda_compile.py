"""Compiles the CUDA kernels (csrc/cuda/*.cu) with nvcc, for sm_80 and sm_90, whenever nvcc is on
PATH: a CUDA compile error fails the suite even on machines without a GPU.

Flags follow torch.utils.cpp_extension's own nvcc build of a CUDAExtension (its standard, defines
and include directories).  A CPU-only torch wheel lacks c10/cuda/impl/cuda_cmake_macros.h, which
CUDA builds of torch generate; a one-line stand-in is written to a temporary include directory.
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp_ext

CUDA_SOURCES = sorted((Path(__file__).resolve().parents[1] / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")


def nvcc_command(source, obj, include_dir):
    flags = list(getattr(cpp_ext, "COMMON_NVCC_FLAGS", ["--expt-relaxed-constexpr"]))
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [NVCC, "-c", str(source), "-o", str(obj), "-std=c++20", "--threads", "2",
            f"-I{include_dir}", *[f"-I{p}" for p in cpp_ext.include_paths()],
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
            *flags, "-Xcompiler", "-fPIC",
            "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]


def test_there_are_cuda_sources():
    assert CUDA_SOURCES, "csrc/cuda/*.cu not found"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    macros = tmp_path / "include" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    macros.parent.mkdir(parents=True)
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in cpp_ext.include_paths()):
        macros.write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    obj = tmp_path / (source.stem + ".o")
    res = subprocess.run(nvcc_command(source, obj, tmp_path / "include"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"nvcc failed on {source.name}:\n{res.stderr[-6000:]}"
    assert obj.stat().st_size > 0
    listing = subprocess.run(["cuobjdump", "--list-elf", str(obj)], capture_output=True, text=True) \
        if shutil.which("cuobjdump") else None
    if listing is not None and listing.returncode == 0:
        assert "sm_80" in listing.stdout and "sm_90" in listing.stdout, listing.stdout
