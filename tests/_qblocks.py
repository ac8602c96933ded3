"""Random valid blocks of every quantized ggml type tilellm reads: any bit pattern is a valid block except scale
fields that are inf / nan, so the bytes are random and the scale fields are set to finite values (of about
`mag`, either sign)."""
from __future__ import annotations

import numpy as np

from tilellm.quant import TYPE_INFO, GGMLType

T = GGMLType
# byte offsets of the f16 scale fields
F16_SCALES: dict[GGMLType, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.Q8_1: (0, 2),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.IQ4_NL: (0,), T.IQ4_XS: (0,), T.IQ2_XXS: (0,), T.IQ2_XS: (0,), T.IQ2_S: (0,), T.IQ3_XXS: (0,),
    T.IQ3_S: (0,), T.IQ1_S: (0,), T.TQ1_0: (52,), T.TQ2_0: (64,),
}


def valid_blocks(t: GGMLType, nb: int, rng: np.random.Generator, mag: float = 1.0) -> np.ndarray:
    """[nb, type_size] uint8: nb random blocks of type t with finite scales."""
    ts = TYPE_INFO[t].type_size
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)

    def f16(n: int) -> np.ndarray:
        return (rng.uniform(0.1, 1.0, n) * mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)

    if t in F16_SCALES:
        for off in F16_SCALES[t]:
            raw[:, off:off + 2] = f16(nb).view(np.uint8).reshape(nb, 2)
    elif t == T.Q8_K:
        raw[:, 0:4] = (rng.uniform(-1, 1, nb) * mag).astype(np.float32).view(np.uint8).reshape(nb, 4)
    elif t == T.IQ1_M:
        # the f16 scale is spread over the top nibbles of the 4 u16 scale words at bytes 48..55
        d = f16(nb).view(np.uint16).astype(np.uint16)
        sc = raw[:, 48:56].copy().view(np.uint16) & np.uint16(0x0FFF)
        for i in range(4):
            sc[:, i] |= ((d >> np.uint16(4 * i)) & np.uint16(0xF)) << np.uint16(12)
        raw[:, 48:56] = sc.view(np.uint8)
    elif t == T.MXFP4:
        # e8m0 exponent: 2^(e - 128) per unit of the (doubled) e2m1 table; near mag
        e = int(np.clip(np.round(np.log2(max(mag, 1e-30))) + 128, 2, 250))
        raw[:, 0] = rng.integers(e - 3, e + 1, nb, dtype=np.uint8)
    # NVFP4: its ue4m3 scales are finite for every byte
    return raw
