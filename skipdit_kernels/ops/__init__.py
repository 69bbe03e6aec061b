"""The op layer: every fused computation the models run, one contract each.

Each op has a torch reference (``<op>_reference``) that defines it; the backend chosen with
``use_backend`` / ``SKIPDIT_BACKEND`` decides which implementation runs. Each op module declares the
op's spec (``ops.spec.OpSpec``: reference, backends, sample inputs, tolerance), from which the
backends' kernel tables, the tests, ``testing.gpu_check`` and the op benchmarks derive.
"""

from ._backend import auto_backend, available_backends, backend_status, current_backend, use_backend
from .adaln_modulate import adaln_modulate, adaln_modulate_reference
from .attention import attention, attention_reference
from .forecast_blend import forecast_blend, forecast_blend_reference
from .gated_residual import (
    gated_residual,
    gated_residual_reference,
    linear_gated_residual,
    linear_gated_residual_reference,
)
from .guidance import classifier_free_guidance
from .linear import linear, linear_reference
from .linear_gelu import linear_gelu, linear_gelu_reference
from .skip_fuse import skip_fuse, skip_fuse_adaln, skip_fuse_adaln_reference, skip_fuse_reference

__all__ = [
    "adaln_modulate",
    "adaln_modulate_reference",
    "attention",
    "attention_reference",
    "auto_backend",
    "available_backends",
    "backend_status",
    "classifier_free_guidance",
    "current_backend",
    "forecast_blend",
    "forecast_blend_reference",
    "gated_residual",
    "gated_residual_reference",
    "linear_gated_residual",
    "linear_gated_residual_reference",
    "linear",
    "linear_reference",
    "linear_gelu",
    "linear_gelu_reference",
    "skip_fuse",
    "skip_fuse_adaln",
    "skip_fuse_adaln_reference",
    "skip_fuse_reference",
    "use_backend",
]

# After the op modules: the backends build their kernel tables from the specs those modules declare.
from . import triton as _triton  # noqa: E402, F401, I001  registers the probe only; Triton loads on first use
from . import native as _native  # noqa: E402, F401  the compiled backend; reports, never raises, when missing
