"""Adam for the CPU field tables, fused into the backward of their lookup (FBGEMM's CPU kernel has
no Adam): train.sparse_optimizer "adam" and "lazy_adam" on CPU (docs/embedding.md "Sparse Adam").

  adam       the result of dense Adam over whole tables with the whole-table L2 (the reference
             backend), at the cost of the looked-up rows: a row a batch did not look up still owes
             the steps dense Adam would have taken on it (gradient emb_reg * w, plus its momentum);
             it takes them before a lookup next reads it, and every row takes them before the
             weights are read as a whole (eval mode, state_dict, this optimizer's state_dict, an lr
             change).
  lazy_adam  Adam steps on the looked-up rows only (FBGEMM's fused Adam on CUDA does this too).

Clipping. The reference clips the global gradient norm over every parameter, its dense tables
included (at initialisation the tables' gradients dominate it: norm ~150 against ~1 for the rest on
Frappe, so the first steps are clipped hard, and that shapes the whole run). The trainer therefore
lets this optimizer hold each batch's table gradient until `clip_and_step`, which clips the dense
gradients and the tables' rows by one factor computed from both, then takes the tables' step; the
factor of every step is kept, and a replayed step uses its own. Left out of the norm: the rows the
batch did not look up, whose gradient is emb_reg * w (their square sum emb_reg^2 * ||W||^2 is about
1e-5 against a squared norm of 2e4 while the clip binds on Frappe; docs/embedding.md). Without the
trainer (`deferred` False, the
default) the step is taken in backward, unclipped, like FBGEMM's fused optimizers.

The TBE of FusedFieldTables keeps the weights (so checkpoints, sharding and export see the usual
tables); this object keeps Adam's state in the same flat layout and is the tables' "sparse optimizer"
for the trainer (param_groups' lr, state_dict). Kernel: kernels/sparse_adam.cpp; its op-by-op twin:
reference/sparse_adam.py.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..ops.sparse_adam import sparse_adam_catch_up, sparse_adam_grad_norm_sq, sparse_adam_step

# torch.optim.Adam's defaults, which the reference backend trains its tables with.
BETAS = (0.9, 0.999)


class RowSparseAdam:
    """Adam state for the tables of one TBE (`tbe`: FBGEMM's SplitTableBatchedEmbeddingBagsCodegen on
    CPU, whose `weights_host` holds every table)."""

    def __init__(self, tbe: nn.Module, lr: float, eps: float, decay: float, replay: bool):
        self.tbe = tbe
        self.decay, self.replay = float(decay), bool(replay)
        weights = tbe.weights_host
        self.exp_avg = torch.zeros_like(weights)
        self.exp_avg_sq = torch.zeros_like(weights)
        self.row_step = torch.zeros(int(tbe.hash_size_cumsum[-1]), dtype=torch.int64)
        self.steps = 0
        self.param_groups: list[dict[str, Any]] = [{"lr": float(lr), "betas": BETAS, "eps": float(eps)}]
        self._lr_taken = float(lr)   # the lr of the steps taken so far (owed steps replay with it)
        self.grad_scales = torch.ones(1024)   # [step]: the clipping factor of that step's gradients
        self.deferred = False        # True: backward keeps the gradient for clip_and_step (the trainer)
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None
        self.reference_path = False  # tests: run the op-by-op twin instead of the kernel

    def _layout(self) -> tuple[Tensor, ...]:
        tbe = self.tbe
        return (tbe.weights_host, self.exp_avg, self.exp_avg_sq, self.row_step, tbe.weights_offsets,
                tbe.D_offsets, tbe.hash_size_cumsum)

    def _hyper(self, lr: float) -> tuple[float, ...]:
        group = self.param_groups[0]
        return (lr, group["betas"][0], group["betas"][1], group["eps"], self.decay)

    def backward(self, indices: Tensor, offsets: Tensor, grad_output: Tensor) -> None:
        """The lookup's backward (indices/offsets as the TBE took them, the gradient of its pooled output
        [B, total_D]): the step now, or kept for clip_and_step when deferred."""
        if not self.deferred:
            self._step(indices, offsets, grad_output.float(), 1.0)
        elif self._pending is not None:
            raise RuntimeError("RowSparseAdam: a second backward before clip_and_step took the first one's step")
        else:
            self._pending = (indices, offsets, grad_output.float())

    def clip_and_step(self, dense_params: list[Tensor], max_norm: float) -> Tensor:
        """torch.nn.utils.clip_grad_norm_ over the dense gradients and the kept table gradient together
        (the reference's global norm), then the tables' step with the same factor. Returns the total
        norm (float32, like clip_grad_norm_)."""
        if self._pending is None:
            raise RuntimeError("RowSparseAdam.clip_and_step: no table gradient kept (deferred off, or no backward)")
        indices, offsets, grad = self._pending
        self._pending = None
        grads = [p.grad for p in dense_params if p.grad is not None]
        dense_sq = float(torch.stack([g.norm() for g in grads]).double().pow(2).sum()) if grads else 0.0
        tbe = self.tbe
        table_sq = sparse_adam_grad_norm_sq(tbe.weights_offsets, tbe.D_offsets, tbe.hash_size_cumsum, indices,
                                            offsets, grad, reference_path=self.reference_path)
        total = torch.tensor((dense_sq + table_sq) ** 0.5, dtype=torch.float32)
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale)
        self._step(indices, offsets, grad, float(scale))
        return total

    def _step(self, indices: Tensor, offsets: Tensor, grad_output: Tensor, scale: float) -> None:
        self._sync_lr()
        self.steps += 1
        if self.steps >= len(self.grad_scales):
            self.grad_scales = torch.cat([self.grad_scales, torch.ones(len(self.grad_scales))])
        self.grad_scales[self.steps] = scale
        sparse_adam_step(*self._layout(), indices, offsets, grad_output, self.grad_scales, self.steps,
                         *self._hyper(self._lr_taken), self.replay, reference_path=self.reference_path)

    def catch_up(self, indices: Tensor | None = None, offsets: Tensor | None = None) -> None:
        """The rows of the bags indices/offsets (a lookup about to read them), or every row, take the
        steps they owe (adam); a no-op for lazy_adam."""
        if self.replay and self.steps > 0:
            sparse_adam_catch_up(*self._layout(), indices, offsets, self.grad_scales, self.steps,
                                 *self._hyper(self._lr_taken), reference_path=self.reference_path)

    def _sync_lr(self) -> None:
        lr = float(self.param_groups[0]["lr"])
        if lr != self._lr_taken:
            self.catch_up()          # the owed steps are owed at the old lr
            self._lr_taken = lr

    # The trainer's optimizer interface (torchrec's KeyedOptimizer for the other sparse optimizers).
    def step(self, closure: Any = None) -> None:
        """The update ran in backward; here only an lr change (param_groups) takes effect."""
        self._sync_lr()

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        self.catch_up()   # consistent with the weights, which a state_dict also catches up
        return {"kind": "adam" if self.replay else "lazy_adam", "steps": self.steps,
                "exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone(),
                "row_step": self.row_step.clone(), "param_groups": [dict(g) for g in self.param_groups],
                "lr_taken": self._lr_taken, "grad_scales": self.grad_scales[:self.steps + 1].clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kind = "adam" if self.replay else "lazy_adam"
        if state.get("kind") != kind or state["exp_avg"].shape != self.exp_avg.shape:
            raise InputError(f"sparse optimizer state of {state.get('kind', 'another optimizer')!r} with "
                             f"{tuple(state.get('exp_avg', torch.empty(0)).shape)} values cannot resume "
                             f"{kind!r} over {tuple(self.exp_avg.shape)}")
        self.steps = int(state["steps"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.row_step.copy_(state["row_step"])
        self.param_groups = [dict(g) for g in state["param_groups"]]
        self._lr_taken = float(state["lr_taken"])
        scales = state["grad_scales"]
        self.grad_scales = torch.ones(max(1024, 2 * len(scales)))
        self.grad_scales[:len(scales)] = scales


class AdamLookup(torch.autograd.Function):
    """The TBE's CPU forward (FBGEMM's kernel, sum pooling) on its weights, the rows it reads caught up
    first; backward = the optimizer's step, nothing returned for the weights (they are updated in place, like FBGEMM's fused backward).
    `anchor` is an empty tensor that requires grad, so that autograd calls backward."""

    @staticmethod
    def forward(ctx, anchor: Tensor, optimizer: RowSparseAdam, indices: Tensor, offsets: Tensor) -> Tensor:
        tbe = optimizer.tbe
        optimizer.catch_up(indices, offsets)
        ctx.optimizer = optimizer
        ctx.save_for_backward(indices, offsets)
        return torch.ops.fbgemm.split_embedding_codegen_forward_cpu(
            tbe.weights_host, tbe.weights_offsets, tbe.D_offsets, tbe.total_D, tbe.hash_size_cumsum, indices,
            offsets, int(tbe.pooling_mode), None, 0)   # no per-sample weights (None, not empty); 0: FP32

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        indices, offsets = ctx.saved_tensors
        ctx.optimizer.backward(indices, offsets, grad_output)
        return None, None, None, None
