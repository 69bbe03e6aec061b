"""One spec per op: what defines it, which backends implement it, and the inputs that exercise it.

The idea of PyTorch's OpInfo and extension-cpp's ``sample_inputs``, scaled down. Every public op of
``skipdit_kernels.ops`` declares one ``OpSpec`` next to its code (``SPEC = OpSpec(...)``, which
registers it here). Everything that lists ops derives from these specs: the native and Triton
backends' kernel tables, the fake (meta) implementations of the compiled ops, the contract test
(every op x backend x dtype x layout against its reference, plus ``torch.library.opcheck``),
``skipdit_kernels.testing.gpu_check`` and the op benchmarks' inputs.

A spec's ``sample(draw, B, T, D, out, mean)`` returns the op's positional arguments for a
(batch, tokens, hidden) case; ``out`` is the width of the op's GEMM output (``width * D`` at DiT
shapes, any width in tests). ``sample_args`` draws them in one dtype and memory layout.

Adding an op: its module in ops/ (the op with its argument checks, its reference, ``SPEC``) and its
export in ops/__init__.py; a kernel per backend it lists (``_ops.py`` for Triton under the op's name;
csrc/: the schema line in register.cpp and the kernel with its ``m.impl`` line in each driver). The
contract test, opcheck, the fakes, gpu_check and the op benchmarks pick it up from the spec.

Tolerance (``check_close``): the error against the reference evaluated in float64 is at most twice
the reference's own error in the same dtype, plus ``atol[dtype] * (1 + max|exact|)`` (flash-attn's
criterion: a kernel may differ from eager by rounding, never by more than eager's own rounding).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable, Sequence

import torch

# Memory layouts of sample tensors (applied to every tensor argument, list members included):
#   contiguous   plain row-major storage;
#   transposed   the first two dimensions swapped in memory (unit stride kept last);
#   misaligned   data pointer one element past an allocation's start;
#   every_other  stride 2 along the last dimension;
#   slice        a view [..., 1:1 + n] of (..., n + 9): misaligned start, row stride no multiple of 8
#                (off every vector path of the GPU kernels).
LAYOUTS = ("contiguous", "transposed", "misaligned", "every_other", "slice")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float64: 1e-12}
# (batch, tokens, hidden): empty batch, no tokens, one element, odd sizes, a wide odd-token case.
SHAPES = ((0, 5, 8), (2, 0, 8), (1, 1, 1), (3, 7, 37), (2, 5, 130), (1, 17, 1152))
DIT_SHAPE = (2, 255, 1152)  # batch 2, an odd token count, DiT-XL's hidden

_SPECS: dict[str, "OpSpec"] = {}


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One op's contract and how to exercise it.

    name: the op's name (``ops.<name>``, the backend registry's key, the auto table's key).
    op, reference: the public op and the torch function that defines it (same arguments).
    sample: ``sample(draw, B, T, D, out, mean) -> list`` of the op's positional arguments.
    backends: the backends with kernels for it (``torch`` is the reference; every op has it).
    native: the ``torch.ops.skipdit`` op of the native backend (default: ``name``).
    gemm: positions (activation, weight, bias) of the op's GEMM operands; with ``folds`` the
        activation is ``cat([args[0], args[1]], -1)`` and the weight and bias are the Linear's.
    folds: args[2:6] are (norm_weight, norm_bias, weight, bias) of a LayerNorm + Linear that the
        kernels take folded (``ops.folding``): the library ops take (weight', rowsum, bias') there.
    kernel_reference: torch model of the library op (its arguments, folded ones included);
        default ``reference``. Also the fake (meta) implementation's shape function.
    width: the GEMM output width at DiT shapes, as a multiple of hidden (sample's default ``out``).
    atol: per-dtype absolute slack of ``check_close``.
    exact: the contract evaluated in float64 (float64 arguments), where the reference computes part
        of it in fp32 whatever its inputs (the official fp32 LayerNorm of the skip fusion); default
        the reference.
    """

    name: str
    op: Callable
    reference: Callable
    sample: Callable[..., list]
    backends: tuple[str, ...] = ("torch",)
    native: str | None = None
    gemm: tuple[int, int, int] | None = None
    folds: bool = False
    kernel_reference: Callable | None = None
    width: int = 1
    atol: dict = dataclasses.field(default_factory=lambda: dict(ATOL))
    exact: Callable | None = None

    def __post_init__(self):
        if self.native is None and "native" in self.backends:
            object.__setattr__(self, "native", self.name)
        if self.kernel_reference is None:
            object.__setattr__(self, "kernel_reference", self.reference)
        if self.exact is None:
            object.__setattr__(self, "exact", self.reference)
        _SPECS[self.name] = self

    @property
    def arg_names(self) -> list[str]:
        return list(inspect.signature(self.op).parameters)

    def kernel_args(self, args: Sequence) -> list:
        """The library op's arguments for the public op's ``args`` (folded weights where it folds)."""
        if not self.folds:
            return list(args)
        from .folding import fold_skip_weights

        f = fold_skip_weights(*args[2:6])
        return [args[0], args[1], f.weight, f.rowsum, f.bias, *args[6:]]

    def sample_args(
        self,
        shape=(2, 5, 16),
        out: int | None = None,
        dtype=torch.float32,
        device="cpu",
        layout: str = "contiguous",
        seed: int = 0,
        mean: float = 0.0,
    ) -> list:
        """The op's arguments for ``shape`` = (batch, tokens, hidden), drawn from ``seed`` (the same
        values in every dtype: drawn in fp32, then rounded) and laid out as ``layout``."""
        B, T, D = shape
        draw = Draw(dtype, device, seed)
        args = self.sample(draw, B, T, D, self.width * D if out is None else out, mean)
        return lay(args, layout)


def specs() -> dict[str, OpSpec]:
    """Every registered op spec by name (the ops register theirs when ``skipdit_kernels.ops`` imports)."""
    return dict(_SPECS)


def with_backend(backend: str) -> list[OpSpec]:
    return [s for s in _SPECS.values() if backend in s.backends]


class Draw:
    """Sample tensors of one case: every value drawn in fp32 from one generator, then rounded to the
    case's dtype. Activations may carry a mean; per-sample vectors (shift, scale, gate) are
    ``chunk()`` views of one (batch, 6 * width) tensor, as the adaLN projection yields them;
    LayerNorm parameters stay fp32."""

    def __init__(self, dtype: torch.dtype, device, seed: int):
        self.dtype, self.device = dtype, torch.device(device)
        self.g = torch.Generator().manual_seed(seed)

    def _randn(self, *shape, scale=1.0, mean=0.0, dtype=None) -> torch.Tensor:
        t = torch.randn(*shape, generator=self.g) * scale + mean
        return t.to(device=self.device, dtype=dtype or self.dtype)

    def act(self, *shape, scale=1.0, mean=0.0) -> torch.Tensor:
        return self._randn(*shape, scale=scale, mean=mean)

    def vec(self, batch: int, width: int, scale=0.5) -> torch.Tensor:
        return self._randn(batch, 6 * width, scale=scale).chunk(6, dim=1)[0] if width else self._randn(batch, 0)

    def weight(self, out: int, inp: int) -> torch.Tensor:
        return self._randn(out, inp, scale=max(inp, 1) ** -0.5)

    def bias(self, n: int, scale=0.1) -> torch.Tensor:
        return self._randn(n, scale=scale)

    def norm(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A LayerNorm's (weight, bias), fp32."""
        return (1 + self._randn(n, scale=0.1, dtype=torch.float32), self._randn(n, scale=0.1, dtype=torch.float32))

    def fp32(self, *shape, scale=1.0) -> torch.Tensor:
        return self._randn(*shape, scale=scale, dtype=torch.float32)


def lay(value, layout: str):
    """``value`` (a tensor, or a list/tuple holding tensors) with its tensors' values in ``layout``."""
    if isinstance(value, (list, tuple)):
        return type(value)(lay(v, layout) for v in value)
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    t = value
    if layout == "contiguous":
        return t.contiguous()
    if layout == "misaligned":
        return torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape).copy_(t)
    if layout == "every_other":
        return torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)[..., ::2].copy_(t)
    if layout == "slice":
        n = t.shape[-1]
        return torch.empty(*t.shape[:-1], n + 9, dtype=t.dtype, device=t.device)[..., 1 : 1 + n].copy_(t)
    if layout == "transposed":
        return t if t.dim() < 2 else t.transpose(0, 1).contiguous().transpose(0, 1)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def to_float64(value):
    """``value`` with its floating-point tensors in float64 (lists and tuples recursed)."""
    if isinstance(value, (list, tuple)):
        return type(value)(to_float64(v) for v in value)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def check_close(spec: OpSpec, got, args: Sequence, eager=None) -> tuple[float, float]:
    """(error, bound) of ``got`` against ``spec.reference`` on ``args``, for the output nearest its
    bound: the error against the contract in float64 (``spec.exact``), and the bound 2 * eager's
    error + atol * (1 + max|exact|). Raises AssertionError when an output's shape, dtype or device differs from
    eager's. ``eager``: the reference's outputs on ``args`` when already computed."""
    eager = as_tuple(spec.reference(*args) if eager is None else eager)
    exact = as_tuple(spec.exact(*to_float64(args)))
    worst = (0.0, 1.0)
    for g, e, x in zip(as_tuple(got), eager, exact):
        if g.shape != e.shape or g.dtype != e.dtype or g.device != e.device:
            raise AssertionError(
                f"{spec.name}: output {tuple(g.shape)} {g.dtype} {g.device}, "
                f"reference {tuple(e.shape)} {e.dtype} {e.device}"
            )
        if x.numel() == 0:
            continue
        err = (g.double() - x).abs().max().nan_to_num(nan=math.inf).item()
        bound = 2 * (e.double() - x).abs().max().item() + spec.atol[g.dtype] * (1.0 + x.abs().max().item())
        if err / bound >= worst[0] / worst[1]:
            worst = (err, bound)
    return worst
