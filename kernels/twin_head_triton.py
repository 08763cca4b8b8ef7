"""Fused TF4CTR twin head, Triton kernel for CUDA: the same math as kernels/twin_head.cpp (read that
file's header for the projection layout), float32/bfloat16/float16 inputs, float32 math.

Registered as the CUDA kernel of torch.ops.tf4ctr_fast.twin_head by tf4ctr_fast/ops/twin_head.py.
On CPU it runs only under TRITON_INTERPRET=1 (tests/test_twin_head_triton.py).

Forward (`twin_head_triton`, the op's 11 outputs): a persistent grid; each program walks row blocks
pid, pid + grid, ... For each block it reads h for the dot products, evaluates the row math, stores
the per-row derivatives g [B, K], then re-reads the (cache-resident) tile to add g^T h to its own slot
of parameter-gradient partials. The slots are summed in a fixed order on the host, so results are
deterministic for a given grid. Backward (`grad_h_triton`): grad_h = scale · g @ w, written once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_PROJECTIONS = (1, 1, 2, 5)  # per fusion code: sum, WSF, CF, MoEF


@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); log1p written out (accurate for tiny e).
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    log1p = tl.where(u == 1.0, e, tl.log(u) * e / tl.where(u == 1.0, 1.0, u - 1.0))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _logit_stats(z, y):
    """p = σ(z), q = 1 - p, bce(σ(z), y), p - y, p_t, d p_t / dz, all from z without cancellation."""
    e = tl.exp(-tl.abs(z))
    big = 1.0 / (1.0 + e)
    small = e / (1.0 + e)
    p = tl.where(z >= 0, big, small)
    q = tl.where(z >= 0, small, big)
    bce = y * _softplus(-z) + (1.0 - y) * _softplus(z)
    return p, q, bce, (1.0 - y) * p - y * q, y * p + (1.0 - y) * q, (2.0 * y - 1.0) * p * q


@triton.jit
def _focal(base, gamma):
    """(base^γ, γ base^(γ-1)); γ = 0 gives derivative 0, base is clamped to FLT_MIN for the logs."""
    lg = tl.log2(tl.maximum(base, 1.1754943508222875e-38))
    f = tl.exp2(gamma * lg)
    df = tl.where(gamma == 0.0, 0.0, gamma * tl.exp2((gamma - 1.0) * lg))
    return f, df


@triton.jit
def _col(acc, kcol, j: tl.constexpr):
    return tl.sum(tl.where(kcol[None, :] == j, acc, 0.0), axis=1)


@triton.jit
def _dots(h_ptr, w_ptr, rows, row_ok, H, kcol, K: tl.constexpr, KP: tl.constexpr,
          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """[BLOCK_B, KP]: each row of h with each of the K projection rows of w.

    Every product here and below is 2-D, one projection row at a time (K <= 5, unrolled): the first
    version broadcast to [BLOCK_B, KP, BLOCK_H] and reduced, which the interpreter ran right but the
    H200's compiled code did not (grad_h came out 8x too large at KP = 1, the first GPU run,
    2026-11-30)."""
    acc = tl.zeros([BLOCK_B, KP], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_ok = cols < H
        x = tl.load(h_ptr + rows[:, None] * H + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0).to(tl.float32)
        for k in tl.static_range(K):
            w = tl.load(w_ptr + k * H + cols, mask=col_ok, other=0.0).to(tl.float32)
            acc += tl.where(kcol[None, :] == k, tl.sum(x * w[None, :], axis=1)[:, None], 0.0)
    return acc


@triton.jit
def _weight_grads(h_ptr, part_ptr, rows, row_ok, H, kcol, g, K: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's partial of grad_w += g^T @ h (g: [BLOCK_B, KP], rows beyond B are 0)."""
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_ok = cols < H
        x = tl.load(h_ptr + rows[:, None] * H + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0).to(tl.float32)
        for k in tl.static_range(K):
            slot = part_ptr + k * H + cols
            gw = tl.load(slot, mask=col_ok, other=0.0) + tl.sum(_col(g, kcol, k)[:, None] * x, axis=0)
            tl.store(slot, gw, mask=col_ok)


@triton.jit
def _twin_head_kernel(
    hs_ptr, hc_ptr, ws_ptr, wc_ptr, bs_ptr, bc_ptr, mix_ptr, y_ptr,
    z_ptr, zs_ptr, zc_ptr, gs_ptr, gc_ptr, gws_part_ptr, gwc_part_ptr, small_part_ptr,
    B, HS, HC, alpha, c, gamma, inv_batch,
    FUSION: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, TWIN_FOCUS: tl.constexpr,
    NEED_GRAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    grid = tl.num_programs(0)
    kcol = tl.arange(0, KP)
    k_ok = kcol < K
    bias_s = tl.load(bs_ptr + kcol, mask=k_ok, other=0.0).to(tl.float32)
    bias_c = tl.load(bc_ptr + kcol, mask=k_ok, other=0.0).to(tl.float32)
    a_s = tl.load(mix_ptr).to(tl.float32)
    a_c = tl.load(mix_ptr + 1).to(tl.float32)
    # this program's partial sums: grad b_s, grad b_c [KP]; grad mix (2); loss
    gb_s_acc = tl.zeros([KP], dtype=tl.float32)
    gb_c_acc = tl.zeros([KP], dtype=tl.float32)
    gmix0 = tl.sum(tl.zeros([BLOCK_B], dtype=tl.float32), axis=0)
    gmix1 = gmix0
    loss_acc = gmix0

    for start in range(pid * BLOCK_B, B, grid * BLOCK_B):
        rows = start + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        rows = rows.to(tl.int64)  # rows * H may pass 2^31
        s = _dots(hs_ptr, ws_ptr, rows, row_ok, HS, kcol, K, KP, BLOCK_B, BLOCK_H) + bias_s[None, :]
        t = _dots(hc_ptr, wc_ptr, rows, row_ok, HC, kcol, K, KP, BLOCK_B, BLOCK_H) + bias_c[None, :]
        y = tl.load(y_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        zs = _col(s, kcol, 0)
        zc = _col(t, kcol, 0)
        f = s + t  # columns >= 1: the fusion's projections of [h_s ; h_c]
        dz_dzs = tl.zeros([BLOCK_B], dtype=tl.float32)
        dz_dzc = tl.zeros([BLOCK_B], dtype=tl.float32)
        if FUSION == 0:
            z = zs + zc
            dz_dzs += 1.0
            dz_dzc += 1.0
        elif FUSION == 1:
            z = a_s * zs + a_c * zc
            dz_dzs += a_s
            dz_dzc += a_c
        elif FUSION == 2:
            z = _col(f, kcol, 1)
        else:
            m0 = _col(f, kcol, 3)
            m1 = _col(f, kcol, 4)
            g0 = tl.sigmoid(_col(f, kcol, 1) - _col(f, kcol, 2))  # softmax over 2 gates
            g1 = 1.0 - g0
            z = g0 * m0 + g1 * m1

        p, q, bce, p_minus_y, pt, dpt = _logit_stats(z, y)
        row_loss = bce
        gz = tl.where(row_ok, p_minus_y * inv_batch, 0.0)
        gzs = gz * dz_dzs
        gzc = gz * dz_dzc
        if TWIN_FOCUS:
            p, q, bce, p_minus_y, pt, dpt = _logit_stats(zs, y)
            fs, dfs = _focal(c + pt, gamma)
            row_loss += alpha * bce * fs
            gzs += tl.where(row_ok, alpha * inv_batch * (p_minus_y * fs + bce * dfs * dpt), 0.0)
            p, q, bce, p_minus_y, pt, dpt = _logit_stats(zc, y)
            fc, dfc = _focal((2.0 - c) - pt, gamma)
            row_loss += (1.0 - alpha) * bce * fc
            gzc += tl.where(row_ok, (1.0 - alpha) * inv_batch * (p_minus_y * fc - bce * dfc * dpt), 0.0)
        loss_acc += tl.sum(tl.where(row_ok, row_loss, 0.0), axis=0)
        tl.store(z_ptr + rows, z, mask=row_ok)
        tl.store(zs_ptr + rows, zs, mask=row_ok)
        tl.store(zc_ptr + rows, zc, mask=row_ok)

        if NEED_GRAD:
            # gradients by the projections: column 0 is the branch's own logit, columns >= 1 are
            # shared by both branches (f = s + t)
            gf = tl.zeros([BLOCK_B, KP], dtype=tl.float32)
            if FUSION == 1:
                gmix0 += tl.sum(gz * zs, axis=0)
                gmix1 += tl.sum(gz * zc, axis=0)
            elif FUSION == 2:
                gf = tl.where(kcol[None, :] == 1, gz[:, None], gf)
            elif FUSION == 3:
                dq = gz * g0 * g1 * (m0 - m1)
                gf = tl.where(kcol[None, :] == 1, dq[:, None], gf)
                gf = tl.where(kcol[None, :] == 2, -dq[:, None], gf)
                gf = tl.where(kcol[None, :] == 3, (gz * g0)[:, None], gf)
                gf = tl.where(kcol[None, :] == 4, (gz * g1)[:, None], gf)
            g_s = tl.where(kcol[None, :] == 0, gzs[:, None], gf)
            g_c = tl.where(kcol[None, :] == 0, gzc[:, None], gf)
            gb_s_acc += tl.sum(g_s, axis=0)
            gb_c_acc += tl.sum(g_c, axis=0)
            g_ok = row_ok[:, None] & (kcol < K)[None, :]
            tl.store(gs_ptr + rows[:, None] * K + kcol[None, :], g_s, mask=g_ok)
            tl.store(gc_ptr + rows[:, None] * K + kcol[None, :], g_c, mask=g_ok)
            _weight_grads(hs_ptr, gws_part_ptr + pid * KP * HS, rows, row_ok, HS, kcol, g_s, K, BLOCK_H)
            _weight_grads(hc_ptr, gwc_part_ptr + pid * KP * HC, rows, row_ok, HC, kcol, g_c, K, BLOCK_H)

    small = small_part_ptr + pid * (2 * KP + 3)
    tl.store(small + kcol, gb_s_acc)
    tl.store(small + KP + kcol, gb_c_acc)
    tl.store(small + 2 * KP, gmix0)
    tl.store(small + 2 * KP + 1, gmix1)
    tl.store(small + 2 * KP + 2, loss_acc)


def _grid_size(B: int, block_b: int, device: torch.device) -> int:
    blocks = max(1, triton.cdiv(B, block_b))
    if device.type == "cuda":
        return min(blocks, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(blocks, 2)  # TRITON_INTERPRET=1 on CPU: every program runs in Python


def twin_head_triton(h_s, h_c, w_s, w_c, b_s, b_c, mix, y, alpha, c, gamma, fusion, twin_focus, need_grad,
                     block_b: int = 16, block_h: int = 64, grid: int | None = None):
    """The op's 11 outputs (see tf4ctr_fast/ops/twin_head.py): loss, z, z_s, z_c, the per-row
    derivatives g_s, g_c [B, K] (float32), then the gradients of w_s, w_c, b_s, b_c, mix in their
    inputs' dtypes (the last 7 empty if not need_grad)."""
    if h_s.dtype == torch.float64:
        raise TypeError("twin_head (Triton): float64 is not supported; use float32 or bfloat16")
    K = _PROJECTIONS[fusion]
    KP = triton.next_power_of_2(K)
    B, HS = h_s.shape
    HC = h_c.shape[1]
    h_s, h_c, w_s, w_c = h_s.contiguous(), h_c.contiguous(), w_s.contiguous(), w_c.contiguous()
    b_s, b_c, mix, y = b_s.contiguous(), b_c.contiguous(), mix.contiguous(), y.contiguous()
    grid = grid or _grid_size(B, block_b, h_s.device)
    f32 = dict(dtype=torch.float32, device=h_s.device)
    z, z_s, z_c = (torch.empty(B, **f32) for _ in range(3))
    if need_grad:
        g_s, g_c = torch.empty(B, K, **f32), torch.empty(B, K, **f32)
        gws_part = torch.zeros(grid, KP, HS, **f32)
        gwc_part = torch.zeros(grid, KP, HC, **f32)
    else:
        g_s = g_c = gws_part = gwc_part = torch.empty(0, **f32)
    small_part = torch.empty(grid, 2 * KP + 3, **f32)
    _twin_head_kernel[(grid,)](
        h_s, h_c, w_s, w_c, b_s, b_c, mix, y, z, z_s, z_c, g_s, g_c, gws_part, gwc_part, small_part,
        B, HS, HC, float(alpha), float(c), float(gamma), 1.0 / max(B, 1),
        FUSION=fusion, K=K, KP=KP, TWIN_FOCUS=bool(twin_focus), NEED_GRAD=bool(need_grad),
        BLOCK_B=block_b, BLOCK_H=block_h,
    )
    small = small_part.sum(0)
    loss = small[2 * KP + 2] / max(B, 1)
    if not need_grad:
        return (loss, z, z_s, z_c, *(torch.empty(0, dtype=h_s.dtype, device=h_s.device) for _ in range(7)))
    return (loss, z, z_s, z_c, g_s, g_c,
            gws_part.sum(0)[:K].to(w_s.dtype), gwc_part.sum(0)[:K].to(w_c.dtype),
            small[:K].to(b_s.dtype), small[KP:KP + K].to(b_c.dtype), small[2 * KP:2 * KP + 2].to(mix.dtype))


@triton.jit
def _grad_h_kernel(g_ptr, w_ptr, scale_ptr, out_ptr, B, H, K: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, col_ok = rows < B, cols < H
    rows = rows.to(tl.int64)
    out = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for k in tl.static_range(K):  # 2-D products only: see _dots
        g = tl.load(g_ptr + rows * K + k, mask=row_ok, other=0.0)
        w = tl.load(w_ptr + k * H + cols, mask=col_ok, other=0.0).to(tl.float32)
        out += g[:, None] * w[None, :]
    out = out * tl.load(scale_ptr).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def grad_h_triton(g, w, scale, block_h: int = 128):
    """scale · g @ w ([B, K] float32 @ [K, H]) in w's dtype: the op's backward pass over grad_h."""
    B, K = g.shape
    H = w.shape[1]
    block_b = 64
    g, w = g.contiguous().float(), w.contiguous()
    out = torch.empty(B, H, dtype=w.dtype, device=w.device)
    grid = (triton.cdiv(B, block_b), triton.cdiv(H, block_h))
    _grad_h_kernel[grid](g, w, scale.reshape(1).float(), out, B, H, K=K, BLOCK_B=block_b, BLOCK_H=block_h)
    return out
