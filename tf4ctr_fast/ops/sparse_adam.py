"""Row-sparse Adam steps on FBGEMM's flat table storage: kernels/sparse_adam.cpp on CPU, the reference
(tf4ctr_fast/reference/sparse_adam.py, same arguments, same semantics) where the library is missing.
Used by embedding.sparse_adam.RowSparseAdam; tests: tests/test_sparse_adam.py."""
from __future__ import annotations

import torch

from ..reference import sparse_adam as reference
from . import HAS_KERNELS


def _run(name: str, args: tuple, reference_path: bool):
    op = getattr(torch.ops.tf4ctr_fast, name) if HAS_KERNELS and not reference_path else getattr(reference, name)
    return op(*args)


def sparse_adam_step(*args, reference_path: bool = False) -> None:
    """See reference.sparse_adam.sparse_adam_step for the arguments."""
    _run("sparse_adam_step", args, reference_path)


def sparse_adam_catch_up(*args, reference_path: bool = False) -> None:
    """See reference.sparse_adam.sparse_adam_catch_up for the arguments."""
    _run("sparse_adam_catch_up", args, reference_path)


def sparse_adam_grad_norm_sq(*args, reference_path: bool = False) -> float:
    """See reference.sparse_adam.sparse_adam_grad_norm_sq for the arguments."""
    return _run("sparse_adam_grad_norm_sq", args, reference_path)
