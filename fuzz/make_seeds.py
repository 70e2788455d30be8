#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/ (committed; rerun only to change them): a tiny complete llama GGUF
with a gpt2 tokenizer, a tokenizer-only llama (SentencePiece) GGUF, configs and a safetensors file copied from
tests/data, and texts for the tokenizer target."""
import shutil, struct, pathlib

here = pathlib.Path(__file__).parent
seeds = here / "seeds"

def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
def kv(key, ty, payload): return s(key) + struct.pack("<I", ty) + payload
def u32(key, v): return kv(key, 4, struct.pack("<I", v))
def f32(key, v): return kv(key, 6, struct.pack("<f", v))
def string(key, v): return kv(key, 8, s(v))
def strings(key, items): return kv(key, 9, struct.pack("<IQ", 8, len(items)) + b"".join(s(i) for i in items))
def f32s(key, items): return kv(key, 9, struct.pack("<IQ", 6, len(items)) + b"".join(struct.pack("<f", i) for i in items))
def i32s(key, items): return kv(key, 9, struct.pack("<IQ", 5, len(items)) + b"".join(struct.pack("<i", i) for i in items))

def gguf(kvs, tensors):
    """tensors: (name, dims, ggml type, bytes)"""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    offset, data = 0, b""
    for name, dims, ty, raw in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        pad = (-len(raw)) % 32
        data += raw + b"\0" * pad
        offset += len(raw) + pad
    out += b"\0" * ((-len(out)) % 32)
    return out + data

h, f, kvd, vocab = 32, 32, 16, 8
toks = ["a", "b", "c", "d", "ab", "cd", "Ġ", "Ġab"]
meta = [string("general.architecture", "llama"), u32("llama.embedding_length", h), u32("llama.feed_forward_length", f),
        u32("llama.block_count", 1), u32("llama.attention.head_count", 2), u32("llama.attention.head_count_kv", 1),
        f32("llama.attention.layer_norm_rms_epsilon", 1e-5), u32("llama.context_length", 16),
        string("tokenizer.ggml.model", "gpt2"), strings("tokenizer.ggml.tokens", toks),
        strings("tokenizer.ggml.merges", ["a b", "c d", "Ġ ab"]), u32("tokenizer.ggml.eos_token_id", 0)]
def f16(n): return struct.pack(f"<{n}e", *[((i * 7) % 13 - 6) / 64 for i in range(n)])
def ones(n): return struct.pack(f"<{n}f", *[1.0] * n)
tensors = [("token_embd.weight", [h, vocab], 1, f16(h * vocab))]
for part, dims in [("attn_norm", [h]), ("attn_q", [h, h]), ("attn_k", [h, kvd]), ("attn_v", [h, kvd]),
                   ("attn_output", [h, h]), ("ffn_norm", [h]), ("ffn_gate", [h, f]), ("ffn_up", [h, f]),
                   ("ffn_down", [f, h])]:
    n = 1
    for d in dims: n *= d
    tensors.append((f"blk.0.{part}.weight", dims, 0 if len(dims) == 1 else 1, ones(n) if len(dims) == 1 else f16(n)))
tensors.append(("output_norm.weight", [h], 0, ones(h)))
(seeds / "gguf" / "tiny-llama.gguf").write_bytes(gguf(meta, tensors))

spm = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "h", "e", "he", "ll", "\u2581he"]
spm_meta = [string("general.architecture", "llama"), string("tokenizer.ggml.model", "llama"),
            strings("tokenizer.ggml.tokens", spm), f32s("tokenizer.ggml.scores", [0.0] * 259 + [-1, -2, -2, -1, -0.5, -2]),
            i32s("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * 6), u32("tokenizer.ggml.bos_token_id", 1)]
(seeds / "gguf" / "spm-tokenizer.gguf").write_bytes(gguf(spm_meta, []))

data = here.parent / "tests" / "data"
shutil.copy(data / "quant" / "overflow.safetensors", seeds / "safetensors" / "overflow.safetensors")
for name in ["tiny-plain", "tiny-shared"]:
    shutil.copy(data / name / "config.json", seeds / "config" / f"{name}.json")
for i, text in enumerate(["\x00Hello, world! 123 <|im_end|> é 日本", "\x01hello hell he é\u2581", "\x02x\n\x01ab\n\x01a\n\x01b\n\x03<s>\nab a"]):
    (seeds / "tokenizer" / f"text{i}").write_bytes(text.encode())

# hf_tokenizer: mode byte (0 tokenizer.model; 1 tokenizer.json, NUL, text; 2 tokenizer.json, NUL, config).
hf = data / "hf-tokenizers"
(seeds / "hf_tokenizer").mkdir(exist_ok=True)
(seeds / "hf_tokenizer" / "spm").write_bytes(b"\x00" + (hf / "sentencepiece" / "tokenizer.model").read_bytes())
(seeds / "hf_tokenizer" / "spm-json").write_bytes(b"\x01" + (hf / "sentencepiece-hf" / "tokenizer.json").read_bytes()
                                                  + b"\0a <|tool|> b")
(seeds / "hf_tokenizer" / "bytelevel").write_bytes(b"\x02" + (hf / "bytelevel" / "tokenizer.json").read_bytes()
                                                   + b'\0{"bos_token": "<|im_start|>", "add_bos_token": true}')
(seeds / "hf_tokenizer" / "llama3").write_bytes(b"\x01" + (hf / "llama3" / "tokenizer.json").read_bytes()
                                                + b"\0I'M 12345 at zzyzx\r\n")

# chat_template: each template of tests/data/chat-templates, a NUL byte, then a message's content.
import json
chat = json.loads((data / "chat-templates" / "cases.json").read_text())
(seeds / "chat_template").mkdir(exist_ok=True)
for name, template in chat["templates"].items():
    (seeds / "chat_template" / name).write_bytes(template.encode() + b"\0Hi <b>it's</b> {{ x }}\n")

# session_state: a header for 2 tokens, 1 layer, 1 KV head of 4 (f32), then a truncated copy.
(seeds / "session_state").mkdir(exist_ok=True)
state = b"MLKVSTAT" + struct.pack("<6I", 1, 0, 1, 1, 4, 2) + struct.pack("<2I", 7, 9) + bytes(2 * 1 * 2 * 4 * 4)
(seeds / "session_state" / "f32").write_bytes(state)
(seeds / "session_state" / "cut").write_bytes(state[:40])
