"""Suite-wide setup, kept to one fact: without CUDA, Triton kernels run only under the interpreter.
Triton reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before any test module
imports one (tests/test_twin_head_triton.py). Interpreter runs are slow: keep their grids tiny."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
