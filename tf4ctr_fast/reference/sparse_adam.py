"""The row-sparse Adam of the CPU field tables, op by op: the parity oracle of kernels/sparse_adam.cpp
(and the path used where the compiled library is missing).

Storage is FBGEMM's table-batched layout: one flat float32 `weights` with table t's rows of width
D_t = D_offsets[t+1] - D_offsets[t] from weights_offsets[t]; `exp_avg` / `exp_avg_sq` in the same
layout; `row_step[r]` the last Adam step row r took (global row r = hash_size_cumsum[t] + id).

Replay: a row no batch looked up still owes the steps dense Adam takes on it, with the gradient
decay * w that the whole-table L2 term (decay/2)*||W||^2 gives it. `sparse_adam_catch_up` takes them
(for the rows a lookup is about to read, or for all rows), so a lookup reads what dense Adam would
hold. A step: the batch's gradient rows are summed per distinct row (the caller's gradient includes
the L2 term of the rows it looked up); each such row takes any steps it still owes (when `replay`),
then step `step` with its gradient. Every step is torch.optim.Adam's single-tensor update (no weight
decay, no amsgrad).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _adam(w: Tensor, m: Tensor, v: Tensor, g: Tensor, steps: Tensor, lr: float, beta1: float, beta2: float,
          eps: float) -> None:
    """One Adam step on rows w, m, v [R, D] (in place), row i at step number steps[i] with gradient g[i]."""
    steps = steps.to(torch.float64)[:, None]
    step_size = (lr / (1 - beta1 ** steps)).to(w.dtype)
    bias2_sqrt = (1 - beta2 ** steps).sqrt().to(w.dtype)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = v.sqrt() / bias2_sqrt + eps
    w.add_(-step_size * m / denom)


def _scale(grad_scales: Tensor | None, step: int) -> float | Tensor:
    return 1.0 if grad_scales is None else grad_scales[step]


def _advance(w: Tensor, m: Tensor, v: Tensor, row_step: Tensor, grad: Tensor | None, until: int, lr: float,
             beta1: float, beta2: float, eps: float, decay: float, replay: bool,
             grad_scales: Tensor | None) -> None:
    """Rows [R, D] (copies; written back by the caller) from their row_step [R] to step `until`: the
    missed steps replayed (when replay), then step `until` with `grad` (None: no new step). Step j's
    gradient is multiplied by grad_scales[j] (the trainer's clipping; None: 1)."""
    last = until - 1 if grad is not None else until
    if replay:
        for j in range(int(row_step.min()) + 1 if len(row_step) else last + 1, last + 1):
            todo = row_step < j
            if todo.any():
                wj, mj, vj = w[todo], m[todo], v[todo]
                _adam(wj, mj, vj, decay * wj * _scale(grad_scales, j), torch.full((len(wj),), j), lr, beta1, beta2,
                      eps)
                w[todo], m[todo], v[todo] = wj, mj, vj
    if grad is not None:
        _adam(w, m, v, grad * _scale(grad_scales, until), torch.full((len(w),), until), lr, beta1, beta2, eps)
    row_step.fill_(until)


def _table_views(flat: Tensor, weights_offsets: Tensor, D_offsets: Tensor, hash_size_cumsum: Tensor, t: int):
    dim = int(D_offsets[t + 1] - D_offsets[t])
    rows = int(hash_size_cumsum[t + 1] - hash_size_cumsum[t])
    start = int(weights_offsets[t])
    return flat[start:start + rows * dim].view(rows, dim)


def _row_grads(D_offsets: Tensor, indices: Tensor, offsets: Tensor, grad_output: Tensor, t: int):
    """(distinct rows of table t in the batch, their summed gradient [R, D_t]), or None."""
    batch = grad_output.shape[0]
    d0, d1 = int(D_offsets[t]), int(D_offsets[t + 1])
    bags = offsets[t * batch:(t + 1) * batch + 1].long()
    ids = indices[int(bags[0]):int(bags[-1])].long()
    if ids.numel() == 0:
        return None
    sample = torch.repeat_interleave(torch.arange(batch), bags.diff())
    rows, inverse = torch.unique(ids, return_inverse=True)
    return rows, grad_output.new_zeros(len(rows), d1 - d0).index_add_(0, inverse, grad_output[sample, d0:d1])


def sparse_adam_grad_norm_sq(weights_offsets: Tensor, D_offsets: Tensor, hash_size_cumsum: Tensor, indices: Tensor,
                             offsets: Tensor, grad_output: Tensor) -> float:
    """Sum of squares of the batch's gradient summed per distinct row (a dense table's .grad there)."""
    total = 0.0
    for t in range(weights_offsets.numel()):
        found = _row_grads(D_offsets, indices, offsets, grad_output, t)
        if found is not None:
            total += float(found[1].double().pow(2).sum())
    return total


def sparse_adam_step(weights: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, row_step: Tensor,
                     weights_offsets: Tensor, D_offsets: Tensor, hash_size_cumsum: Tensor, indices: Tensor,
                     offsets: Tensor, grad_output: Tensor, grad_scales: Tensor | None, step: int, lr: float,
                     beta1: float, beta2: float, eps: float, decay: float, replay: bool) -> None:
    """The lookup's backward with the Adam step fused in (kernels/sparse_adam.cpp's op of that name).
    indices/offsets: the TBE's bags, table-major (bag t * B + b); grad_output [B, total_D]; step j's
    gradients times grad_scales[j] (None: 1)."""
    for t in range(weights_offsets.numel()):
        found = _row_grads(D_offsets, indices, offsets, grad_output, t)
        if found is None:
            continue
        rows, grad = found
        w, m, v = (_table_views(x, weights_offsets, D_offsets, hash_size_cumsum, t)
                   for x in (weights, exp_avg, exp_avg_sq))
        steps = row_step[int(hash_size_cumsum[t]):int(hash_size_cumsum[t + 1])]
        wr, mr, vr, sr = w[rows], m[rows], v[rows], steps[rows]
        _advance(wr, mr, vr, sr, grad, step, lr, beta1, beta2, eps, decay, replay, grad_scales)
        w[rows], m[rows], v[rows], steps[rows] = wr, mr, vr, sr


def sparse_adam_catch_up(weights: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, row_step: Tensor,
                         weights_offsets: Tensor, D_offsets: Tensor, hash_size_cumsum: Tensor,
                         indices: Tensor | None, offsets: Tensor | None, grad_scales: Tensor | None, step: int,
                         lr: float, beta1: float, beta2: float, eps: float, decay: float) -> None:
    """Rows replayed up to step `step` (their missed steps taken, no new one): the rows of the bags
    indices/offsets when given (before a lookup reads them), else every row."""
    num_tables = weights_offsets.numel()
    batch = (offsets.numel() - 1) // num_tables if offsets is not None else 0
    for t in range(num_tables):
        w, m, v = (_table_views(x, weights_offsets, D_offsets, hash_size_cumsum, t)
                   for x in (weights, exp_avg, exp_avg_sq))
        steps = row_step[int(hash_size_cumsum[t]):int(hash_size_cumsum[t + 1])]
        if indices is None:
            candidates = torch.arange(len(steps))
        else:
            candidates = indices[int(offsets[t * batch]):int(offsets[(t + 1) * batch])].long().unique()
        behind = candidates[steps[candidates] < step]
        if behind.numel() == 0:
            continue
        wr, mr, vr, sr = w[behind], m[behind], v[behind], steps[behind]
        _advance(wr, mr, vr, sr, None, step, lr, beta1, beta2, eps, decay, True, grad_scales)
        w[behind], m[behind], v[behind], steps[behind] = wr, mr, vr, sr
