//! GGUF weight types no kernel reads, decoded on the CPU: llama.cpp's K-quants Q2_K, Q3_K, Q4_K, Q5_K and
//! Q6_K (the types of its Q2_K ... Q6_K files), Q5_0 and Q5_1, and the non-linear IQ4_NL and IQ4_XS. Files
//! quantized for thin models hold the latter too: llama.cpp stores a row that is not a whole number of
//! 256-value K-quant blocks (MobileLLM's and SmolLM2's 576 or 960 columns) as Q5_0 in a `Q4_K_M` file, Q5_1
//! in a `Q5_K_M`, IQ4_NL in the low-bit ones.
//!
//! A tensor of these types is dequantized here once and quantized to the type the caller asks for
//! (`HostModel::from_gguf(file, Some(type))`, `--dtype`), or else to the nearest type a kernel reads
//! ([`kernel_type`]). Each value is computed with the f32 operations, in the order, of gguf-py's reference
//! dequantizer (`gguf.quants`), so the two agree bit for bit.
//!
//! A K-quant block holds 256 values in sub-blocks: Q4_K and Q5_K have 8 sub-blocks of 32, each with a 6-bit
//! scale and min (`d * sc * q - dmin * m`, q 4 or 5 bits); Q2_K 16 of 16 with 4-bit scales and mins (q 2
//! bits); Q3_K 16 of 16 with signed 6-bit scales (`d * sc * q`, q 3 bits in [-4, 3]); Q6_K 16 of 16 with an
//! i8 scale (`d * sc * (q - 32)`, q 6 bits). Q5_0 (`d * (q - 16)`) and Q5_1 (`d * q + m`) are blocks of 32
//! with 5-bit q; IQ4_NL blocks of 32 map 4-bit q through [`IQ4_VALUES`] (`d * v[q]`), and IQ4_XS does so in
//! 256-value blocks of 8 sub-blocks of 32 with 6-bit scales (`d * (ls - 32) * v[q]`).

use half::f16;

use super::gguf::GgmlType;
use crate::error::{Error, Result};
use crate::quant::WeightType;

/// Values per K-quant (and IQ4_XS) block.
pub const QK_K: usize = 256;

/// The 16 levels of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// The types decoded here, by ggml id: `(name, values per block, bytes per block)`.
fn kind(ty: GgmlType) -> Option<(&'static str, usize, usize)> {
    match ty.0 {
        6 => Some(("Q5_0", 32, 22)),
        7 => Some(("Q5_1", 32, 24)),
        10 => Some(("Q2_K", QK_K, 84)),
        11 => Some(("Q3_K", QK_K, 110)),
        12 => Some(("Q4_K", QK_K, 144)),
        13 => Some(("Q5_K", QK_K, 176)),
        14 => Some(("Q6_K", QK_K, 210)),
        20 => Some(("IQ4_NL", 32, 18)),
        23 => Some(("IQ4_XS", QK_K, 136)),
        _ => None,
    }
}

/// The weight type a tensor of `ty` becomes when the caller names none; `None`: not a type decoded here.
/// Q2_K, Q3_K and Q4_K become Q4_1: a Q4_K sub-block of 32 values is a 16-level affine grid
/// (`d * sc * q - dmin * m`) that a Q4_1 block of the same 32 values holds, up to rounding its scale and
/// minimum to f16, whenever its quants span 0..15; Q2_K and Q3_K have fewer levels per 16 values. The rest
/// become Q8_0, whose 255 levels per 32 values are finer than their 16 to 64; an IQ4_NL block whose values
/// reach level -127 is Q8_0 exactly (its scale is the f16 `d` and its levels are integers).
pub fn kernel_type(ty: GgmlType) -> Option<WeightType> {
    match kind(ty)?.0 {
        "Q2_K" | "Q3_K" | "Q4_K" => Some(WeightType::Q4_1),
        _ => Some(WeightType::Q8_0),
    }
}

/// The `n` values of `data` (whole blocks of type `ty`), or an error naming what does not fit.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let Some((name, per_block, size)) = kind(ty) else {
        return Err(Error::invalid(
            "CPU-decoded GGUF type",
            ty,
            "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1, IQ4_NL or IQ4_XS",
        ));
    };
    if !n.is_multiple_of(per_block) || data.len() != n / per_block * size {
        return Err(Error::invalid(
            format!("{name} data"),
            format!("{} bytes for {n} values", data.len()),
            format!("{size} bytes per {per_block} values"),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for block in data.chunks_exact(size) {
        match ty.0 {
            6 => q5_0(block, &mut out),
            7 => q5_1(block, &mut out),
            10 => q2_k(block, &mut out),
            11 => q3_k(block, &mut out),
            12 => q4_q5_k(block, None, &block[16..144], &mut out),
            13 => q4_q5_k(block, Some(&block[16..48]), &block[48..176], &mut out),
            14 => q6_k(block, &mut out),
            20 => iq4(half(block, 0), &block[2..18], &mut out),
            _ => iq4_xs(block, &mut out),
        }
    }
    Ok(out)
}

/// Nibble `j` (0..32) of a 32-value block's 16 bytes: value j < 16 in the low nibble of byte j, value
/// j >= 16 in the high nibble of byte j - 16 (GGUF's Q4_0 / Q5_0 / IQ4_NL order).
fn nibble(qs: &[u8], j: usize) -> u8 {
    (qs[j % 16] >> (4 * (j / 16))) & 0x0F
}

/// The fifth bit of value `j` in Q5_0 / Q5_1's 4 bytes (a little-endian u32, bit j).
fn fifth_bit(qh: &[u8], j: usize) -> u8 {
    (qh[j / 8] >> (j % 8)) & 1
}

/// Q5_0: d (f16), 4 bytes of fifth bits, 16 bytes of nibbles; `d * (q - 16)`.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let (qh, qs) = (&b[2..6], &b[6..22]);
    out.extend((0..32).map(|j| d * f32::from((nibble(qs, j) | (fifth_bit(qh, j) << 4)) as i8 - 16)));
}

/// Q5_1: d, m (f16), 4 bytes of fifth bits, 16 bytes of nibbles; `d * q + m`.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b, 0), half(b, 2));
    let (qh, qs) = (&b[4..8], &b[8..24]);
    out.extend((0..32).map(|j| d * f32::from(nibble(qs, j) | (fifth_bit(qh, j) << 4)) + m));
}

/// 32 values `d * IQ4_VALUES[q]` from 16 bytes of nibbles (IQ4_NL's block, IQ4_XS's sub-block).
fn iq4(d: f32, qs: &[u8], out: &mut Vec<f32>) {
    out.extend((0..32).map(|j| d * f32::from(IQ4_VALUES[nibble(qs, j) as usize])));
}

/// IQ4_XS: d (f16), the sub-scales' high bit pairs (a little-endian u16, bits 2i, 2i+1), their low nibbles
/// (4 bytes, sub-block i in byte i / 2, low nibble first), 128 bytes of nibbles (16 per sub-block).
fn iq4_xs(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let high = u16::from_le_bytes([b[2], b[3]]);
    let (low, qs) = (&b[4..8], &b[8..136]);
    for i in 0..8 {
        let ls = ((low[i / 2] >> (4 * (i % 2))) & 0x0F) | ((((high >> (2 * i)) & 0x03) as u8) << 4);
        iq4(d * f32::from(ls as i8 - 32), &qs[16 * i..16 * i + 16], out);
    }
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
