"""Kernel tests run the compiled Triton kernels on a GPU, and Triton's CPU interpreter without one.

TRITON_INTERPRET must be set before workbench.kernels.triton_stats is imported (Triton reads it when it
decorates the kernels) and stay set while they run, so it is set here, before the test modules import.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
