"""The csrc/ extension (fcn_caffe_repro._C); the package's metadata is pyproject.toml's [project]."""
from setuptools import setup

def _fused_op_extension():
    """fcn_caffe_repro._C from csrc/: the CPU kernels always, the CUDA kernels when torch has CUDA
    or FORCE_CUDA=1; built by torch's cpp_extension with ninja."""
    import glob
    import os

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, library_paths

    root = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob("csrc/*.cpp", root_dir=root) + glob.glob("csrc/cpu/*.cpp", root_dir=root))
    # Portable: no -march (csrc/cpu/simd.h picks AVX2/AVX-512 code at run time).
    cxx = ["-O3", "-fopenmp-simd"]
    # rpath to torch's libraries, so `import fcn_caffe_repro._C` works before `import torch`.
    link = [f"-Wl,-rpath,{p}" for p in library_paths()]
    if torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1":
        ext = CUDAExtension("fcn_caffe_repro._C", sources + sorted(glob.glob("csrc/cuda/*.cu", root_dir=root)),
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
                            extra_link_args=link + [f"-Wl,-rpath,{p}" for p in library_paths("cuda")])
    else:
        ext = CppExtension("fcn_caffe_repro._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _fused_op_extension()

setup(ext_modules=ext_modules, cmdclass=cmdclass)  # the rest is pyproject.toml's [project]
