"""Triton kernels (imported only when the ``triton`` backend is first used).

Activations are (batch, tokens, features) addressed through explicit strides, so chunk() views of
the adaLN projection and transposed views run without copies; row m of the flattened batch is
(m // tokens, m % tokens). Everything accumulates in fp32 and rounds once on the store. Hidden sizes
need not be powers of two (masks on every load), token counts need not fill a block.

Each kernel exists plain (``*_kernel``: fixed block sizes, used under TRITON_INTERPRET=1 where
autotuning would only multiply the simulation time) and autotuned (``*_tuned``) over configs that
suit both Hopper (sm_90) and Ampere (sm_80): up to 128x256x64 tiles with 3-4 stages and 8 warps,
down to 64x32 tiles for the small-M shapes of batch 1-2 inference. Autotuning keys on the GEMM
shape, so DiT's fixed shapes tune once.
"""

from __future__ import annotations

import triton
import triton.language as tl


# ---- row kernels: non-affine LayerNorm + adaLN modulation ---------------------------------------
@triton.jit
def adaln_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    out_ptr,
    M,
    T,
    D,
    sxb,
    sxt,
    sxd,
    shb,
    shd,
    scb,
    scd,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < M
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    b = rows // T
    t = rows % T
    x = tl.load(x_ptr + (b * sxb + t * sxt)[:, None] + cols[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    shift = tl.load(shift_ptr + b[:, None] * shb + cols[None, :] * shd, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + b[:, None] * scb + cols[None, :] * scd, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * (1.0 + scale) + shift
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


# ---- gated residual: x + gate[b] * y --------------------------------------------------------------
@triton.jit
def gated_residual_kernel(
    x_ptr,
    gate_ptr,
    y_ptr,
    out_ptr,
    M,
    T,
    D,
    sxb,
    sxt,
    sxd,
    sgb,
    sgd,
    syb,
    syt,
    syd,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows < M)[:, None] & (cols < D)[None, :]
    b = rows // T
    t = rows % T
    x = tl.load(x_ptr + (b * sxb + t * sxt)[:, None] + cols[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + (b * syb + t * syt)[:, None] + cols[None, :] * syd, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + b[:, None] * sgb + cols[None, :] * sgd, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], (x + g * y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order: GROUP_M row tiles share each weight column tile while it is in L2."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _dot(a, w, acc, ALLOW_TF32: tl.constexpr):
    if ALLOW_TF32:
        acc = tl.dot(a, w, acc)
    else:
        acc = tl.dot(a, w, acc, input_precision="ieee")
    return acc


# ---- Linear with fused epilogue: bias, then GELU(tanh) or x + gate * (.) -------------------------
@triton.jit
def linear_kernel(
    a_ptr,
    w_ptr,
    bias_ptr,
    x_ptr,
    gate_ptr,
    out_ptr,
    M,
    N,
    K,
    T,
    sab,
    sat,
    sak,
    swn,
    swk,
    sxb,
    sxt,
    sxn,
    sgb,
    sgn,
    HAS_BIAS: tl.constexpr,
    EPILOGUE: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """out = epilogue(a @ w^T + bias); EPILOGUE 0: none, 1: tanh-GELU, 2: x + gate[b] * (.)."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    mmask = rm < M
    nmask = rn < N
    b = rm // T
    t = rm % T
    a_ptrs = a_ptr + (b * sab + t * sat)[:, None] + rk[None, :] * sak
    w_ptrs = w_ptr + rn[None, :] * swn + rk[:, None] * swk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = (k0 + rk) < K
        a = tl.load(a_ptrs, mask=mmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = _dot(a, w, acc, ALLOW_TF32)
        a_ptrs += BLOCK_K * sak
        w_ptrs += BLOCK_K * swk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    omask = mmask[:, None] & nmask[None, :]
    if EPILOGUE == 1:
        # 0.5 * (1 + tanh(u)) == sigmoid(2u), u = sqrt(2/pi) * (v + 0.044715 v^3)
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * u)
    if EPILOGUE == 2:
        res = tl.load(x_ptr + (b * sxb + t * sxt)[:, None] + rn[None, :] * sxn, mask=omask, other=0.0)
        g = tl.load(gate_ptr + b[:, None] * sgb + rn[None, :] * sgn, mask=omask, other=0.0)
        acc = res.to(tl.float32) + g.to(tl.float32) * acc
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)


# ---- skip fusion: Linear(LayerNorm(cat[x, skip])) with the LayerNorm folded into the GEMM --------
@triton.jit
def _skip_half(
    src_ptr,
    row_off,
    sd,
    w_ptr,
    col0,
    swn,
    swk,
    rn,
    nmask,
    mmask,
    pivot,
    acc,
    s1,
    s2,
    D,
    ALLOW_TF32: tl.constexpr,
    SHIFT_A: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One half of [x | skip]: acc += src @ W'[:, col0:col0+D]^T (src - pivot with SHIFT_A) and the
    pivot-shifted row sums."""
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = src_ptr + row_off[:, None] + rk[None, :] * sd
    w_ptrs = w_ptr + rn[None, :] * swn + (col0 + rk)[:, None] * swk
    for k0 in range(0, D, BLOCK_K):
        kmask = (k0 + rk) < D
        amask = mmask[:, None] & kmask[None, :]
        a = tl.load(a_ptrs, mask=amask, other=0.0)
        w = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        af = tl.where(amask, a.to(tl.float32) - pivot[:, None], 0.0)
        s1 += tl.sum(af, axis=1)
        s2 += tl.sum(af * af, axis=1)
        if SHIFT_A:
            acc = _dot(af, w, acc, ALLOW_TF32)
        else:
            acc = _dot(a, w, acc, ALLOW_TF32)
        a_ptrs += BLOCK_K * sd
        w_ptrs += BLOCK_K * swk
    return acc, s1, s2


@triton.jit
def skip_fuse_kernel(
    x_ptr,
    s_ptr,
    w_ptr,
    rowsum_ptr,
    bias_ptr,
    pivot_ptr,
    out_ptr,
    M,
    N,
    D,
    T,
    sxb,
    sxt,
    sxd,
    ssb,
    sst,
    ssd,
    swn,
    swk,
    eps,
    ALLOW_TF32: tl.constexpr,
    SHIFT_A: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """y = rstd * (z @ W'^T - mean * rowsum(W')) + bias', z = [x | skip] never materialised.

    Row statistics accumulate in fp32 alongside the GEMM's K loop, shifted by a pivot p per row
    (``pivot_ptr``: the row's mean from a cheap pre-pass, fp32, need not be exact) so that rows with
    a large mean do not cancel: mean = p + S1/n, var = S2/n - (S1/n)^2 with S1 = sum(z - p),
    S2 = sum((z - p)^2).

    The GEMM term cancels too: acc - mean * rowsum loses |mean| / std digits of acc. With SHIFT_A
    (fp32 inputs) the GEMM reads z - p instead, so y = rstd * (acc' - (S1/n) * rowsum) + bias' and
    nothing large cancels. p is the mean, not one element of the row: with p = z[0], |S1/n| is of
    the order of the std and under TF32 the rounding of z - p and of W' (which rowsum does not see)
    leaves 2-3x the error of LayerNorm-then-GEMM (simulated); with the mean, about 1x (as the native
    driver, csrc/include/skipdit/folded.h). Half-precision inputs are not shifted: z - p would be
    rounded to the input dtype again, while the products of the exact half inputs accumulate in
    fp32 anyway."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mmask = rm < M
    nmask = rn < N
    b = rm // T
    t = rm % T
    x_row = b * sxb + t * sxt
    s_row = b * ssb + t * sst
    pivot = tl.load(pivot_ptr + rm, mask=mmask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    s1 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc, s1, s2 = _skip_half(
        x_ptr, x_row, sxd, w_ptr, 0, swn, swk, rn, nmask, mmask, pivot, acc, s1, s2, D, ALLOW_TF32, SHIFT_A, BLOCK_K
    )
    acc, s1, s2 = _skip_half(
        s_ptr, s_row, ssd, w_ptr, D, swn, swk, rn, nmask, mmask, pivot, acc, s1, s2, D, ALLOW_TF32, SHIFT_A, BLOCK_K
    )
    n = 2 * D
    dm = s1 / n
    if SHIFT_A:
        center = dm
    else:
        center = pivot + dm
    var = tl.maximum(s2 / n - dm * dm, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    rowsum = tl.load(rowsum_ptr + rn, mask=nmask, other=0.0)
    bias = tl.load(bias_ptr + rn, mask=nmask, other=0.0)
    y = rstd[:, None] * (acc - center[:, None] * rowsum[None, :]) + bias[None, :]
    tl.store(
        out_ptr + rm[:, None] * N + rn[None, :], y.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :]
    )


# ---- autotuned variants (GPU) --------------------------------------------------------------------
def _row_configs():
    return [
        triton.Config({"BLOCK_M": bm}, num_warps=w)
        for bm, w in ((1, 4), (1, 8), (2, 4), (2, 8), (4, 4), (4, 8), (8, 8), (8, 16))
    ]


def _eltwise_configs():
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_D": bd}, num_warps=w)
        for bm, bd, w in ((4, 256, 4), (8, 256, 4), (4, 512, 4), (8, 512, 8), (16, 256, 8), (2, 1024, 4), (16, 128, 4))
    ]


def _gemm_configs():
    shapes = (  # BLOCK_M, BLOCK_N, BLOCK_K, stages, warps: Hopper favours the large tiles, Ampere 128x128
        (128, 256, 64, 3, 8),
        (256, 128, 64, 3, 8),
        (128, 128, 64, 4, 8),
        (128, 128, 32, 4, 4),
        (64, 256, 32, 4, 4),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 128, 64, 3, 4),
        (64, 64, 64, 3, 4),
        (128, 32, 32, 4, 4),
        (64, 32, 32, 5, 2),
    )
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for m, n, k, s, w in shapes
    ]


adaln_tuned = triton.autotune(_row_configs(), key=["M", "D"])(adaln_kernel)
gated_residual_tuned = triton.autotune(_eltwise_configs(), key=["M", "D"])(gated_residual_kernel)
linear_tuned = triton.autotune(_gemm_configs(), key=["M", "N", "K", "EPILOGUE"])(linear_kernel)
skip_fuse_tuned = triton.autotune(_gemm_configs(), key=["M", "N", "D"])(skip_fuse_kernel)

# Fixed block sizes for the interpreter: few, large programs (numpy cost is per program and op).
INTERPRET_META = {
    "row": {"BLOCK_M": 16},
    "eltwise": {"BLOCK_M": 16, "BLOCK_D": 256},
    "gemm": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4},
}
