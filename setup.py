"""Installable package for ssl-mamba.

`pip install .` compiles nothing: every kernel is either pure PyTorch, Triton (JIT-compiled
at run time on a CUDA machine) or mamba-ssm's optional CUDA extension, which users install
themselves (see README).  torch is declared as a range so that an already-installed torch
(CPU or CUDA build) satisfies it and pip never replaces it.
"""
import platform
import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "ssl_mamba" / "__init__.py").read_text()).group(1)

REQUIRES = [
    "torch>=2.1",
    "numpy",
    "h5py",
    "scipy",
    "tensorboardX",
    "pillow",  # tensorboardX needs it for image summaries but does not declare it
    "medpy",
    "click",
    "pyyaml",
    "tqdm",
    "matplotlib",
    "einops",
]
# Triton ships Linux x86-64/aarch64 wheels only; elsewhere the PyTorch scan backend is used.
if platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64"):
    REQUIRES.append("triton")

setup(
    name="ssl-mamba",
    version=VERSION,
    description="Label-scarce medical image segmentation with Mamba-UNet and interchangeable semi-supervised methods",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ssl_mamba", "ssl_mamba.*", "methods", "methods.*"]),
    include_package_data=True,
    install_requires=REQUIRES,
    extras_require={"dev": ["pytest>=7", "pytest-timeout"]},
    entry_points={"console_scripts": ["ssl-mamba=ssl_mamba.cli:main"]},
)
