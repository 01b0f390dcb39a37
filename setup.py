"""The compiled extensions; the package's metadata is pyproject.toml's [project].

fcn_caffe_repro._C (csrc/, against torch) and fcn_caffe_repro.caffe._prototxt_fast (plain C over
the Python C API, no torch: the prototxt reader's fast path)."""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PROTOTXT_FAST = "fcn_caffe_repro.caffe._prototxt_fast"


def _prototxt_extension():
    return Extension(PROTOTXT_FAST, ["fcn_caffe_repro/caffe/_prototxt_fast.c"], extra_compile_args=["-O2"])


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
    return ext, BuildExtension.with_options(use_ninja=True)


fused_op, torch_build_ext = _fused_op_extension()


class BuildExt(torch_build_ext):
    """torch's build for _C; setuptools' own for the plain C extension, built first, before torch's
    build rewires the compiler (C++ flags, ninja) for everything it builds."""

    def build_extensions(self):
        every = self.extensions
        try:
            self.extensions = [e for e in every if e.name == PROTOTXT_FAST]
            build_ext.build_extensions(self)
            self.extensions = [e for e in every if e.name != PROTOTXT_FAST]
            super().build_extensions()
        finally:
            self.extensions = every


# The rest is pyproject.toml's [project].
setup(ext_modules=[fused_op, _prototxt_extension()], cmdclass={"build_ext": BuildExt})
