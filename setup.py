"""Build and install fcn_caffe_repro; the csrc/ extension is built here (see ext_modules below)."""
from setuptools import find_packages, setup

# ext_modules / cmdclass: owned by the fused-op work (csrc/), filled in there.
ext_modules, cmdclass = [], {}

setup(
    name="fcn_caffe_repro",
    version="0.1.0",
    description="Caffe-faithful Fully Convolutional Networks (Long, Shelhamer, Darrell) on PyTorch",
    packages=find_packages(include=["fcn_caffe_repro", "fcn_caffe_repro.*"]),
    package_data={"fcn_caffe_repro": ["data/lists/*/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<2.15",
        "numpy",
        "scipy",
        "pillow",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
