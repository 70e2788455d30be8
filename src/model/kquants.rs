//! llama.cpp's K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (the types of its Q2_K ... Q6_K files), decoded on
//! the CPU. The crate keeps no K-quant on the GPU: a GGUF tensor of these types loads only when the caller asks
//! for a conversion (`HostModel::from_gguf(file, Some(type))`, `--dtype`), dequantized here once and
//! quantized to the requested type. Each value is computed with the f32 operations, in the order, of
//! gguf-py's reference dequantizer (`gguf.quants`), so the two agree bit for bit.
//!
//! A block holds 256 values in sub-blocks: Q4_K and Q5_K have 8 sub-blocks of 32, each with a 6-bit scale
//! and min (`d * sc * q - dmin * m`, q 4 or 5 bits); Q2_K 16 of 16 with 4-bit scales and mins (q 2 bits);
//! Q3_K 16 of 16 with signed 6-bit scales (`d * sc * q`, q 3 bits in [-4, 3]); Q6_K 16 of 16 with an i8
//! scale (`d * sc * (q - 32)`, q 6 bits).

use half::f16;

use super::gguf::GgmlType;
use crate::error::{Error, Result};

/// Values per K-quant block.
pub const QK_K: usize = 256;

/// The K-quant types decoded here, by ggml id: `(name, bytes per block)`.
fn kind(ty: GgmlType) -> Option<(&'static str, usize)> {
    match ty.0 {
        10 => Some(("Q2_K", 84)),
        11 => Some(("Q3_K", 110)),
        12 => Some(("Q4_K", 144)),
        13 => Some(("Q5_K", 176)),
        14 => Some(("Q6_K", 210)),
        _ => None,
    }
}

/// Whether `ty` is a K-quant this module decodes.
pub fn is_supported(ty: GgmlType) -> bool {
    kind(ty).is_some()
}

/// The `n` values of `data` (whole blocks of type `ty`), or an error naming what does not fit.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let Some((name, size)) = kind(ty) else {
        return Err(Error::invalid("K-quant type", ty, "Q2_K, Q3_K, Q4_K, Q5_K or Q6_K"));
    };
    if !n.is_multiple_of(QK_K) || data.len() != n / QK_K * size {
        return Err(Error::invalid(
            format!("{name} data"),
            format!("{} bytes for {n} values", data.len()),
            format!("{size} bytes per {QK_K} values"),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for block in data.chunks_exact(size) {
        match ty.0 {
            10 => q2_k(block, &mut out),
            11 => q3_k(block, &mut out),
            12 => q4_q5_k(block, None, &block[16..144], &mut out),
            13 => q4_q5_k(block, Some(&block[16..48]), &block[48..176], &mut out),
            _ => q6_k(block, &mut out),
        }
    }
    Ok(out)
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scales and mins of Q4_K / Q5_K's 8 sub-blocks, packed in 12 bytes.
fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        m[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, m)
}

/// The 2 bits of value `e` (0..256) in 64 bytes laid out as Q2_K, Q3_K and Q6_K lay them: each half of 128
/// values takes 32 bytes, bits 2t and 2t+1 of byte i for value 32t + i.
fn two_bits(bytes: &[u8], e: usize) -> u8 {
    let (h, within) = (e / 128, e % 128);
    (bytes[32 * h + within % 32] >> (2 * (within / 32))) & 0x03
}

/// Q2_K: 16 bytes of scales (low nibble) and mins (high nibble), 64 bytes of 2-bit quants, d, dmin (f16).
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for e in 0..QK_K {
        let s = scales[e / 16];
        let (dl, ml) = (d * f32::from(s & 0x0F), dmin * f32::from(s >> 4));
        out.push(dl * f32::from(two_bits(qs, e)) - ml);
    }
}

/// Q3_K: 32 bytes of high bits (bit k of byte i for value 32k + i; set means no offset of -4), 64 bytes of
/// low 2-bit pairs, 12 bytes of 6-bit scales (low nibbles in bytes 0-7, high pairs in 8-11, offset 32),
/// d (f16).
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half(b, 108);
    let scale = |i: usize| {
        let low = (scales[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        f32::from((low | (high << 4)) as i8 - 32)
    };
    for e in 0..QK_K {
        let dl = d * scale(e / 16);
        let no_offset = (hmask[e % 32] >> (e / 32)) & 1;
        let q = two_bits(qs, e) as i8 - (((no_offset ^ 1) << 2) as i8);
        out.push(dl * f32::from(q));
    }
}

/// Q4_K (`qh` None) and Q5_K (`qh`: 32 bytes of fifth bits, bit j of byte i for sub-block j, element i):
/// d, dmin (f16), 12 bytes of scales, then `qs`, 128 bytes of nibbles (32-byte chunk c: sub-block 2c in the
/// low nibbles, 2c + 1 in the high ones).
fn q4_q5_k(b: &[u8], qh: Option<&[u8]>, qs: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, m) = scales_mins(&b[4..16]);
    for j in 0..8 {
        let (ds, dm) = (d * f32::from(sc[j]), dmin * f32::from(m[j]));
        let (chunk, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        out.extend(chunk.iter().enumerate().map(|(i, &q)| {
            let fifth = qh.map_or(0, |qh| ((qh[i] >> j) & 1) << 4);
            ds * f32::from(((q >> shift) & 0x0F) | fifth) - dm
        }));
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales, d (f16). Each half of 128 values
/// takes 64 low-nibble bytes (values 0-63 low nibbles, 64-127 high).
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for e in 0..QK_K {
        let (h, within) = (e / 128, e % 128);
        let low = (ql[64 * h + within % 64] >> (4 * (within / 64))) & 0x0F;
        let q = (low | (two_bits(qh, e) << 4)) as i8 - 32;
        out.push(d * f32::from(scales[e / 16] as i8) * f32::from(q));
    }
}
