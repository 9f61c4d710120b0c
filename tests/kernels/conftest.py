"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

TRITON_INTERPRET must be set before ``triton.jit`` decorates the kernels (at import of ``kernels.*``), so it
is set here, before any test module in this folder is imported. On a GPU the kernels compile for real.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
