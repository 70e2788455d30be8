"""Writes decode.safetensors: random blocks of the GGUF types the crate decodes on the CPU (K-quants Q2_K,
Q3_K, Q4_K, Q5_K, Q6_K; Q5_0, Q5_1; IQ4_NL, IQ4_XS) as raw bytes (`<type>.raw`, uint8 [blocks, bytes per
block]) and their values as gguf-py's reference dequantizer computes them (`<type>.values`, float32 [blocks,
values per block]). The f16 scales are drawn from a realistic range, every other byte is random: any bit
pattern is a valid block.
"""
import os

import numpy as np
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(7)
BLOCKS = 12


def scale_bytes(n, lo=1e-4, hi=0.05):
    return (rng.uniform(lo, hi, n) * rng.choice([-1, 1], n)).astype(np.float16).view(np.uint8).reshape(n, 2)


tensors = {}
# (name, type, bytes per block, offsets of the f16 scales: d first, then dmin / m where the type has one)
KINDS = [("q2_k", T.Q2_K, 84, [80, 82]), ("q3_k", T.Q3_K, 110, [108]), ("q4_k", T.Q4_K, 144, [0, 2]),
         ("q5_k", T.Q5_K, 176, [0, 2]), ("q6_k", T.Q6_K, 210, [208]), ("q5_0", T.Q5_0, 22, [0]),
         ("q5_1", T.Q5_1, 24, [0, 2]), ("iq4_nl", T.IQ4_NL, 18, [0]), ("iq4_xs", T.IQ4_XS, 136, [0])]
for name, ty, size, scales in KINDS:
    raw = rng.integers(0, 256, (BLOCKS, size), dtype=np.uint8)
    for i, at in enumerate(scales):
        # Q6_K's and Q3_K's d may be negative (signed sub-scales); d and dmin of the others are positive.
        s = scale_bytes(BLOCKS)
        if len(scales) == 2 and ty != T.Q5_1:
            s = np.abs(s.view(np.float16)).view(np.uint8)
        raw[:, at:at + 2] = s
    values = dequantize(raw.reshape(-1), ty).reshape(BLOCKS, -1).astype(np.float32)
    tensors[f"{name}.raw"] = raw
    tensors[f"{name}.values"] = values
save_file(tensors, os.path.join(HERE, "decode.safetensors"))
print({k: v.shape for k, v in tensors.items()})
