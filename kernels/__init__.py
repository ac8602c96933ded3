"""tilellm.kernels: the compiled C matmul kernels, one cffi module per ISA variant.

    from tilellm import kernels
    kernels.compiled()        # e.g. ['avx2', 'portable']
    kernels.cpu_features()    # e.g. {'avx2', 'fma', 'f16c', ...}
    lib = kernels.load("portable", act_rounding="fine")   # its own C context (tl_ctx) of options
    p = lib.prepare(GGMLType.Q8_0, x)                 # x float32 [n, k]
    y = lib.gemm(GGMLType.Q8_0, w_rows_uint8, k, p)   # float32 [n, m]

See docs/kernels.md for the variant table and how the driver / micro-kernel split works.
"""
from __future__ import annotations

from ._lib import (
                   ACT_ROUNDING,
                   AMX_FEATURES,
                   CPU_CAP_ENV,
                   DEFAULT_OPTIONS,
                   FALLBACK,
                   FEATURE_BITS,
                   OPTIONS,
                   REQUIRES,
                   VARIANTS,
                   KernelLib,
                   Prepared,
                   compiled,
                   cpu_cap,
                   cpu_features,
                   default_threads,
                   detected_cpu_features,
                   load,
                   options_from_env,
)

__all__ = ["compiled", "cpu_features", "detected_cpu_features", "cpu_cap", "CPU_CAP_ENV", "load", "KernelLib",
           "Prepared", "VARIANTS", "REQUIRES", "FALLBACK", "FEATURE_BITS", "default_threads", "ACT_ROUNDING",
           "OPTIONS", "DEFAULT_OPTIONS", "options_from_env", "AMX_FEATURES"]
