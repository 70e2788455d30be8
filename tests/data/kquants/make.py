"""Writes kquants.safetensors: random K-quant blocks (Q4_K, Q5_K, Q6_K: the types of llama.cpp's Q4_K_M,
Q5_K_M and Q6_K files) as raw bytes (`<type>.raw`, uint8 [blocks, bytes per block]) and their values as
gguf-py's reference dequantizer computes them (`<type>.values`, float32 [blocks, 256]). The f16 scales are
drawn from a realistic range, every other byte is random: any bit pattern is a valid block.
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
for name, ty, size in [("q4_k", T.Q4_K, 144), ("q5_k", T.Q5_K, 176), ("q6_k", T.Q6_K, 210)]:
    raw = rng.integers(0, 256, (BLOCKS, size), dtype=np.uint8)
    if ty == T.Q6_K:
        raw[:, 208:210] = scale_bytes(BLOCKS)  # d is last
    else:
        raw[:, 0:2] = np.abs(scale_bytes(BLOCKS).view(np.float16)).view(np.uint8)  # d
        raw[:, 2:4] = np.abs(scale_bytes(BLOCKS).view(np.float16)).view(np.uint8)  # dmin
    values = dequantize(raw.reshape(-1), ty).reshape(BLOCKS, 256).astype(np.float32)
    tensors[f"{name}.raw"] = raw
    tensors[f"{name}.values"] = values
save_file(tensors, os.path.join(HERE, "kquants.safetensors"))
print({k: v.shape for k, v in tensors.items()})
