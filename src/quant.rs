//! Weight formats: CPU quantize / dequantize, lossless GGUF block conversion, and the GPU layout.
//!
//! The quantized types have exactly GGML's semantics (as gguf-py 0.19 implements them): blocks of 32
//! consecutive weights along `in_features`, an f16 scale `d` per block (plus an f16 minimum `m` for Q4_1).
//!
//! # GPU layout (one `array<u32>`, every load 4-byte aligned)
//! A matrix `[rows, cols]` is cut into `blocks = ceil(cols / 32)` blocks per row; block `g = row * blocks + b`.
//! - **quants region** (word 0..): block `g` occupies `words_per_block` consecutive words at `g * words_per_block`:
//!   - `f32`: 32 words (the f32 bits); `f16`: 16 words, element `2i` in the low half of word `i`;
//!     columns past `cols` in the last block are zero (f32/f16 accept any `cols`);
//!   - `q8_0`: 8 words, the 32 int8 quants, element `4i + j` in byte `j` of word `i` (GGUF byte order);
//!   - `q4_0` / `q4_1`: 4 words = GGUF's 16 quant bytes unchanged: byte `j` holds element `j` in its low
//!     nibble and element `j + 16` in its high nibble.
//! - **scales region** (word `scale_offset = rows * blocks * words_per_block` ..):
//!   - `q8_0` / `q4_0`: f16 `d` of block `g` in word `scale_offset + g / 2`, low half when `g` is even;
//!   - `q4_1`: word `scale_offset + g` = `d | m << 16` (both f16);
//!   - `f32` / `f16`: none.
//!
//! A weight kept in a texture ([`WeightStorage::Texture`], CPU drivers) is **tiled**: the same words with
//! the blocks reordered so that, within each [`TEXTURE_TILE_ROWS`] rows, block 0 of every row comes first,
//! then block 1, and so on ([`tiled_block`]); the scales follow the same order.
//!
//! [`WeightDesc`] carries these numbers to `kernels/weights.wgsl`.

use half::{bf16, f16};

use crate::device::{Gpu, WeightStorage};
use crate::error::{Error, Result};
use crate::shader::ShaderVariant;

/// Weights per quantization block.
pub const BLOCK: usize = 32;

/// A weight matrix format on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32-bit float.
    F32,
    /// 16-bit float (read with `unpack2x16float`: no device f16 feature needed).
    F16,
    /// GGML Q8_0: f16 `d = amax/127`, int8 `q`, value `q*d` (8.5 bits per weight).
    Q8_0,
    /// GGML Q4_0: f16 `d = max/-8`, `q` in 0..15, value `(q-8)*d` (4.5 bits per weight).
    Q4_0,
    /// GGML Q4_1: f16 `d = (max-min)/15`, f16 `m = min`, value `q*d + m` (5 bits per weight).
    Q4_1,
}

impl WeightType {
    /// Every weight type.
    pub const ALL: [WeightType; 5] =
        [WeightType::F32, WeightType::F16, WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1];

    /// The shader flag that selects this type in `kernels/weights.wgsl` (one of [`crate::shader::WEIGHT_FLAGS`]).
    pub fn flag(self) -> &'static str {
        match self {
            WeightType::F32 => "W_F32",
            WeightType::F16 => "W_F16",
            WeightType::Q8_0 => "W_Q8_0",
            WeightType::Q4_0 => "W_Q4_0",
            WeightType::Q4_1 => "W_Q4_1",
        }
    }

    /// Whether the type stores blocks of 32 with scales (so `in_features` must be a multiple of 32).
    pub fn is_quantized(self) -> bool {
        matches!(self, WeightType::Q8_0 | WeightType::Q4_0 | WeightType::Q4_1)
    }

    /// Words of the quants region per 32-weight block in the GPU layout.
    pub fn words_per_block(self) -> usize {
        match self {
            WeightType::F32 => 32,
            WeightType::F16 => 16,
            WeightType::Q8_0 => 8,
            WeightType::Q4_0 | WeightType::Q4_1 => 4,
        }
    }

    /// Bytes of one GGUF block of 32 weights (for f32/f16: 32 elements).
    pub fn gguf_block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 128,
            WeightType::F16 => 64,
            WeightType::Q8_0 => 34,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
        }
    }

    /// Average bits per weight (GGUF and GPU sizes agree up to padding).
    pub fn bits_per_weight(self) -> f64 {
        self.gguf_block_bytes() as f64 * 8.0 / BLOCK as f64
    }

    /// Average bytes per weight.
    pub fn bytes_per_weight(self) -> f64 {
        self.gguf_block_bytes() as f64 / BLOCK as f64
    }

    /// Bytes of a `[rows, cols]` matrix in GGUF tensor data.
    pub fn gguf_bytes(self, rows: usize, cols: usize) -> usize {
        match self {
            WeightType::F32 => rows * cols * 4,
            WeightType::F16 => rows * cols * 2,
            _ => rows * (cols / BLOCK) * self.gguf_block_bytes(),
        }
    }

    /// Checks that `[rows, cols]` can be stored in this type.
    pub fn check_shape(self, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Err(Error::shape(format!("{self} weight"), &[rows, cols], "non-zero rows and columns"));
        }
        if self.is_quantized() && !cols.is_multiple_of(BLOCK) {
            return Err(Error::invalid(
                format!("in_features of a {self} weight"),
                cols,
                "a multiple of 32 (the quantization block)",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4_0 => "q4_0",
            WeightType::Q4_1 => "q4_1",
        })
    }
}

impl std::str::FromStr for WeightType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(WeightType::F32),
            "f16" => Ok(WeightType::F16),
            "q8_0" => Ok(WeightType::Q8_0),
            "q4_0" => Ok(WeightType::Q4_0),
            "q4_1" => Ok(WeightType::Q4_1),
            other => Err(Error::invalid("weight type", format!("`{other}`"), "one of f32, f16, q8_0, q4_0, q4_1")),
        }
    }
}

/// The layout numbers a kernel needs, as the `WeightDesc` struct of `kernels/weights.wgsl` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct WeightDesc {
    /// Rows (`out_features`).
    pub rows: u32,
    /// Columns (`in_features`).
    pub cols: u32,
    /// 32-column blocks per row (`ceil(cols / 32)`).
    pub blocks: u32,
    /// Word index where the scales region starts.
    pub scale_offset: u32,
}

/// GGML's `roundf` as gguf-py writes it (`np_roundf`): round half away from zero, in f32.
fn np_roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    if n > 0.0 {
        b
    } else if n < 0.0 {
        -b
    } else {
        0.0 * b
    }
}

fn inv(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Quantizes one block of 32: returns (quant words, scale bits) in the GPU layout.
fn quantize_block(wtype: WeightType, x: &[f32], q: &mut Vec<u32>) -> u32 {
    match wtype {
        WeightType::Q8_0 => {
            let amax = x.iter().fold(0.0f32, |m, v| if v.abs() > m || v.is_nan() { v.abs() } else { m });
            let d = amax / 127.0;
            let id = inv(d);
            let mut bytes = [0u8; 32];
            for (b, v) in bytes.iter_mut().zip(x) {
                // `as` saturates and maps NaN to 0: a defined result for non-finite input.
                *b = (np_roundf(v * id) as i8) as u8;
            }
            q.extend(bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            f16::from_f32(d).to_bits() as u32
        }
        WeightType::Q4_0 | WeightType::Q4_1 => {
            let (d, m, offset, min) = if wtype == WeightType::Q4_0 {
                // The signed element of largest magnitude, the first one on ties (numpy argmax).
                let mut max = x[0];
                for &v in x {
                    if v.abs() > max.abs() {
                        max = v;
                    }
                }
                (max / -8.0, 0.0, 8.5f32, 0.0f32)
            } else {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                ((max - min) / 15.0, min, 0.5f32, min)
            };
            let id = inv(d);
            let mut nib = [0u8; 32];
            for (n, v) in nib.iter_mut().zip(x) {
                *n = (((v - min) * id + offset).trunc() as u8).min(15);
            }
            let mut bytes = [0u8; 16];
            for j in 0..16 {
                bytes[j] = nib[j] | (nib[j + 16] << 4);
            }
            q.extend(bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            let d_bits = f16::from_f32(d).to_bits() as u32;
            if wtype == WeightType::Q4_0 {
                d_bits
            } else {
                d_bits | (f16::from_f32(m).to_bits() as u32) << 16
            }
        }
        WeightType::F32 | WeightType::F16 => 0,
    }
}

/// A weight matrix in host memory, in exactly the GPU layout (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct HostWeight {
    /// The format.
    pub wtype: WeightType,
    /// `out_features`.
    pub rows: usize,
    /// `in_features`.
    pub cols: usize,
    words: Vec<u32>,
}

impl HostWeight {
    fn blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    fn scale_offset(&self) -> usize {
        self.rows * self.blocks() * self.wtype.words_per_block()
    }

    /// Assembles the layout from per-block quant words and per-block scale bits.
    fn assemble(wtype: WeightType, rows: usize, cols: usize, mut quants: Vec<u32>, scales: &[u32]) -> HostWeight {
        match wtype {
            WeightType::Q8_0 | WeightType::Q4_0 => {
                quants.extend(scales.chunks(2).map(|p| p[0] | p.get(1).copied().unwrap_or(0) << 16));
            }
            WeightType::Q4_1 => quants.extend_from_slice(scales),
            WeightType::F32 | WeightType::F16 => {}
        }
        HostWeight { wtype, rows, cols, words: quants }
    }

    /// The scale bits of block `g` (f16 `d`, or `d | m << 16` for Q4_1; 0 for f32/f16).
    fn scale_bits(&self, g: usize) -> u32 {
        let s = self.scale_offset();
        match self.wtype {
            WeightType::Q8_0 | WeightType::Q4_0 => (self.words[s + g / 2] >> (16 * (g % 2))) & 0xFFFF,
            WeightType::Q4_1 => self.words[s + g],
            WeightType::F32 | WeightType::F16 => 0,
        }
    }

    fn check_len(wtype: WeightType, rows: usize, cols: usize, len: usize, what: &str) -> Result<()> {
        wtype.check_shape(rows, cols)?;
        match rows.checked_mul(cols) {
            Some(n) if n == len => Ok(()),
            // saturating: the product may be what overflowed.
            _ => Err(Error::shape(
                what,
                &[len],
                format!("{} elements for a [{rows}, {cols}] weight", rows.saturating_mul(cols)),
            )),
        }
    }

    /// Quantizes (or stores) a row-major `[rows, cols]` f32 matrix, with gguf-py's exact rules.
    /// Non-finite inputs give a defined result (NaN quants become 0, overflowing f16 scales become inf).
    pub fn quantize(wtype: WeightType, rows: usize, cols: usize, data: &[f32]) -> Result<HostWeight> {
        Self::check_len(wtype, rows, cols, data.len(), "f32 weight data")?;
        let blocks = cols.div_ceil(BLOCK);
        match wtype {
            WeightType::F32 | WeightType::F16 => {
                let per_row = blocks * wtype.words_per_block();
                let mut words = vec![0u32; rows * per_row];
                for (r, row) in data.chunks(cols).enumerate() {
                    let out = &mut words[r * per_row..(r + 1) * per_row];
                    if wtype == WeightType::F32 {
                        for (w, v) in out.iter_mut().zip(row) {
                            *w = v.to_bits();
                        }
                    } else {
                        for (i, v) in row.iter().enumerate() {
                            out[i / 2] |= (f16::from_f32(*v).to_bits() as u32) << (16 * (i % 2));
                        }
                    }
                }
                Ok(HostWeight { wtype, rows, cols, words })
            }
            _ => {
                let mut quants = Vec::with_capacity(rows * blocks * wtype.words_per_block());
                let scales: Vec<u32> = data.chunks(BLOCK).map(|b| quantize_block(wtype, b, &mut quants)).collect();
                Ok(Self::assemble(wtype, rows, cols, quants, &scales))
            }
        }
    }

    /// Stores a row-major f16 matrix: bit-exact for `F16`, through f32 for the other types.
    pub fn from_f16(wtype: WeightType, rows: usize, cols: usize, data: &[f16]) -> Result<HostWeight> {
        if wtype == WeightType::F16 {
            Self::check_len(wtype, rows, cols, data.len(), "f16 weight data")?;
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
            return Self::from_gguf_bytes(wtype, rows, cols, &bytes);
        }
        let f: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        Self::quantize(wtype, rows, cols, &f)
    }

    /// Stores a row-major bf16 matrix (through f32, which holds bf16 exactly).
    pub fn from_bf16(wtype: WeightType, rows: usize, cols: usize, data: &[bf16]) -> Result<HostWeight> {
        let f: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        Self::quantize(wtype, rows, cols, &f)
    }

    /// The dequantized row-major matrix: exactly the values the GPU computes for each weight
    /// (`q*d` / `(q-8)*d` are exact in f32; Q4_1's `q*d + m` rounds once, as a GPU fma or mul+add does).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            self.dequantize_row_into(r, &mut out);
        }
        out
    }

    /// Dequantizes one row into `out` (appending `cols` values).
    pub fn dequantize_row_into(&self, row: usize, out: &mut Vec<f32>) {
        let blocks = self.blocks();
        let wpb = self.wtype.words_per_block();
        for b in 0..blocks {
            let g = row * blocks + b;
            let q = &self.words[g * wpb..(g + 1) * wpb];
            let n = (self.cols - b * BLOCK).min(BLOCK);
            let s = self.scale_bits(g);
            let d = f16::from_bits(s as u16).to_f32();
            let m = f16::from_bits((s >> 16) as u16).to_f32();
            for j in 0..n {
                out.push(match self.wtype {
                    WeightType::F32 => f32::from_bits(q[j]),
                    WeightType::F16 => f16::from_bits((q[j / 2] >> (16 * (j % 2))) as u16).to_f32(),
                    WeightType::Q8_0 => ((q[j / 4] >> (8 * (j % 4))) as u8 as i8) as f32 * d,
                    WeightType::Q4_0 => (nibble(q, j) as f32 - 8.0) * d,
                    WeightType::Q4_1 => (nibble(q, j) as f32).mul_add(d, m),
                });
            }
        }
    }

    /// Reads GGUF tensor data (row-major blocks; Q8_0 34 B, Q4_0 18 B, Q4_1 20 B per block; plain f32/f16).
    pub fn from_gguf_bytes(wtype: WeightType, rows: usize, cols: usize, bytes: &[u8]) -> Result<HostWeight> {
        wtype.check_shape(rows, cols)?;
        let want = wtype.gguf_bytes(rows, cols);
        if bytes.len() != want {
            return Err(Error::shape(
                format!("GGUF {wtype} tensor data (bytes)"),
                &[bytes.len()],
                format!("{want} bytes for a [{rows}, {cols}] matrix"),
            ));
        }
        let blocks = cols.div_ceil(BLOCK);
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as u32;
        let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        match wtype {
            WeightType::F32 | WeightType::F16 => {
                let per_row = blocks * wtype.words_per_block();
                let mut words = vec![0u32; rows * per_row];
                let esize = if wtype == WeightType::F32 { 4 } else { 2 };
                for r in 0..rows {
                    let out = &mut words[r * per_row..(r + 1) * per_row];
                    for c in 0..cols {
                        let o = (r * cols + c) * esize;
                        if esize == 4 {
                            out[c] = u32_at(o);
                        } else {
                            out[c / 2] |= u16_at(o) << (16 * (c % 2));
                        }
                    }
                }
                Ok(HostWeight { wtype, rows, cols, words })
            }
            _ => {
                let bsize = wtype.gguf_block_bytes();
                let n = rows * blocks;
                let mut quants = Vec::with_capacity(n * wtype.words_per_block());
                let mut scales = Vec::with_capacity(n);
                for g in 0..n {
                    let o = g * bsize;
                    let (scale, qstart) = match wtype {
                        WeightType::Q4_1 => (u32_at(o), o + 4),
                        _ => (u16_at(o), o + 2),
                    };
                    scales.push(scale);
                    quants.extend((0..wtype.words_per_block()).map(|i| u32_at(qstart + 4 * i)));
                }
                Ok(Self::assemble(wtype, rows, cols, quants, &scales))
            }
        }
    }

    /// Writes GGUF tensor data: the exact inverse of [`HostWeight::from_gguf_bytes`].
    pub fn to_gguf_bytes(&self) -> Vec<u8> {
        let blocks = self.blocks();
        let wpb = self.wtype.words_per_block();
        let mut out = Vec::with_capacity(self.wtype.gguf_bytes(self.rows, self.cols));
        match self.wtype {
            WeightType::F32 | WeightType::F16 => {
                let per_row = blocks * wpb;
                for r in 0..self.rows {
                    let row = &self.words[r * per_row..(r + 1) * per_row];
                    for c in 0..self.cols {
                        if self.wtype == WeightType::F32 {
                            out.extend_from_slice(&row[c].to_le_bytes());
                        } else {
                            out.extend_from_slice(&((row[c / 2] >> (16 * (c % 2))) as u16).to_le_bytes());
                        }
                    }
                }
            }
            _ => {
                for g in 0..self.rows * blocks {
                    let s = self.scale_bits(g);
                    if self.wtype == WeightType::Q4_1 {
                        out.extend_from_slice(&s.to_le_bytes());
                    } else {
                        out.extend_from_slice(&(s as u16).to_le_bytes());
                    }
                    for w in &self.words[g * wpb..(g + 1) * wpb] {
                        out.extend_from_slice(&w.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// Rows `start..end` as their own matrix (bit-exact), e.g. to split an embedding larger than one binding.
    pub fn slice_rows(&self, start: usize, end: usize) -> Result<HostWeight> {
        if start >= end || end > self.rows {
            return Err(Error::invalid(
                "row range of a weight slice",
                format!("{start}..{end}"),
                format!("a non-empty range within 0..{}", self.rows),
            ));
        }
        let blocks = self.blocks();
        let wpb = self.wtype.words_per_block();
        let quants = self.words[start * blocks * wpb..end * blocks * wpb].to_vec();
        let scales: Vec<u32> = (start * blocks..end * blocks).map(|g| self.scale_bits(g)).collect();
        Ok(Self::assemble(self.wtype, end - start, self.cols, quants, &scales))
    }

    /// The words of the texture layout: blocks (and their scales) in [`tiled_block`] order.
    pub fn tiled_words(&self) -> Vec<u32> {
        let blocks = self.blocks();
        let wpb = self.wtype.words_per_block();
        let count = self.rows * blocks;
        let mut quants = vec![0u32; count * wpb];
        let mut scales = vec![0u32; count];
        for row in 0..self.rows {
            for b in 0..blocks {
                let g = row * blocks + b;
                let t = tiled_block(self.rows, blocks, row, b);
                quants[t * wpb..(t + 1) * wpb].copy_from_slice(&self.words[g * wpb..(g + 1) * wpb]);
                scales[t] = self.scale_bits(g);
            }
        }
        Self::assemble(self.wtype, self.rows, self.cols, quants, &scales).words
    }

    /// The layout numbers for kernels.
    pub fn desc(&self) -> WeightDesc {
        WeightDesc {
            rows: self.rows as u32,
            cols: self.cols as u32,
            blocks: self.blocks() as u32,
            scale_offset: self.scale_offset() as u32,
        }
    }

    /// The GPU words.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// Bytes of the GPU layout.
    pub fn size_bytes(&self) -> u64 {
        self.words.len() as u64 * 4
    }
}

fn nibble(q: &[u32], j: usize) -> u32 {
    let byte = (q[(j % 16) / 4] >> (8 * (j % 4))) & 0xFF;
    if j < 16 {
        byte & 0xF
    } else {
        byte >> 4
    }
}

/// Texels per texture row of a [`WeightStorage::Texture`] weight (`kernels/weights.wgsl` `WTEX_ROW`).
pub const TEXTURE_ROW_TEXELS: usize = 4096;

/// Rows per tile of a texture weight (`kernels/weights.wgsl` `WTILE`): a CPU driver's workgroup covers
/// up to 128 rows, and with the tiled order it reads them as one sequential stream.
pub const TEXTURE_TILE_ROWS: usize = 128;

/// Where block `block` of `row` goes in the texture layout of a `[rows, blocks * 32]` weight: tiles of
/// [`TEXTURE_TILE_ROWS`] rows (the last one shorter), block-major within a tile.
pub fn tiled_block(rows: usize, blocks: usize, row: usize, block: usize) -> usize {
    let tile0 = row - row % TEXTURE_TILE_ROWS;
    let height = TEXTURE_TILE_ROWS.min(rows - tile0);
    tile0 * blocks + block * height + (row - tile0)
}

#[derive(Debug, Clone)]
enum Storage {
    Buffer(wgpu::Buffer),
    // Its usage says how kernels read it: STORAGE_BINDING (`TextureReads::Storage`) or TEXTURE_BINDING.
    Texture { texture: wgpu::Texture, view: wgpu::TextureView },
}

/// A weight matrix on the GPU, in the layout of [`HostWeight`], kept in a storage buffer or a texture
/// ([`WeightStorage`]). Kernels bind it with [`GpuWeight::binding`] and compile the matching variant
/// ([`GpuWeight::variant`]).
#[derive(Debug, Clone)]
pub struct GpuWeight {
    storage: Storage,
    wtype: WeightType,
    rows: usize,
    cols: usize,
    desc: WeightDesc,
    size: u64,
}

impl GpuWeight {
    /// Uploads a host weight where the device keeps weights ([`Gpu::weight_storage`]).
    pub fn upload(gpu: &Gpu, host: &HostWeight) -> Result<GpuWeight> {
        GpuWeight::upload_as(gpu, host, gpu.weight_storage())
    }

    /// Uploads a host weight into the given storage. Errors with [`Error::Capacity`] when it exceeds one
    /// storage binding or the largest texture (split it first with [`HostWeight::slice_rows`]).
    pub fn upload_as(gpu: &Gpu, host: &HostWeight, storage: WeightStorage) -> Result<GpuWeight> {
        let words = host.words.len();
        let what = || format!("{} weight [{}, {}]", host.wtype, host.rows, host.cols);
        let (storage, size) = match storage {
            WeightStorage::Buffer => {
                let size = host.size_bytes();
                if size > gpu.max_binding_bytes() || size > u32::MAX as u64 {
                    return Err(Error::Capacity {
                        what: format!("{} (bytes in one binding)", what()),
                        requested: size as usize,
                        capacity: gpu.max_binding_bytes() as usize,
                    });
                }
                let buffer = gpu.create_buffer(
                    &what(),
                    size,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                )?;
                gpu.queue().write_buffer(&buffer, 0, bytemuck::cast_slice(&host.words));
                (Storage::Buffer(buffer), size)
            }
            WeightStorage::Texture => {
                // One texture row of up to TEXTURE_ROW_TEXELS texels; a weight that fits one row gets a
                // texture exactly as wide as it needs (the shader's `t % WTEX_ROW` is then just `t`).
                let texels = words.div_ceil(4).max(1);
                let width = texels.min(TEXTURE_ROW_TEXELS);
                let height = texels.div_ceil(width);
                let max = gpu.limits().max_texture_dimension_2d as usize;
                if height > max || width > max {
                    return Err(Error::Capacity {
                        what: format!("{} (texture rows of {TEXTURE_ROW_TEXELS} texels)", what()),
                        requested: height,
                        capacity: max,
                    });
                }
                let texture = gpu.create_texture(&what(), width as u32, height as u32)?;
                let mut padded = host.tiled_words();
                padded.resize(width * height * 4, 0);
                gpu.queue().write_texture(
                    texture.as_image_copy(),
                    bytemuck::cast_slice(&padded),
                    wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some((width * 16) as u32),
                        rows_per_image: Some(height as u32),
                    },
                    texture.size(),
                );
                let view = texture.create_view(&Default::default());
                (Storage::Texture { texture, view }, (width * height * 16) as u64)
            }
        };
        Ok(GpuWeight { storage, wtype: host.wtype, rows: host.rows, cols: host.cols, desc: host.desc(), size })
    }

    /// Where the words live.
    pub fn storage(&self) -> WeightStorage {
        match self.storage {
            Storage::Buffer(_) => WeightStorage::Buffer,
            Storage::Texture { .. } => WeightStorage::Texture,
        }
    }

    /// The storage buffer, when the weight lives in one.
    pub fn buffer(&self) -> Option<&wgpu::Buffer> {
        match &self.storage {
            Storage::Buffer(b) => Some(b),
            Storage::Texture { .. } => None,
        }
    }

    /// The resource to bind where a kernel declares its weights (`weights` or, with `WTEX`, `weights_tex`).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        match &self.storage {
            Storage::Buffer(b) => b.as_entire_binding(),
            Storage::Texture { view, .. } => wgpu::BindingResource::TextureView(view),
        }
    }

    /// `variant` with this weight's type flag, `WTEX` when it lives in a texture and `IMGREAD` when that
    /// texture is read as a storage texture.
    pub fn variant(&self, variant: ShaderVariant) -> ShaderVariant {
        let storage_reads = matches!(&self.storage,
            Storage::Texture { texture, .. } if texture.usage().contains(wgpu::TextureUsages::STORAGE_BINDING));
        variant
            .flag(self.wtype.flag())
            .flag_if("WTEX", self.storage() == WeightStorage::Texture)
            .flag_if("IMGREAD", storage_reads)
    }
    /// The format.
    pub fn wtype(&self) -> WeightType {
        self.wtype
    }
    /// `out_features`.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// `in_features`.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The `WeightDesc` to put in a kernel's params uniform.
    pub fn desc(&self) -> WeightDesc {
        self.desc
    }
    /// Bytes on the GPU (a texture pads to whole texels, and to a whole row when it spans several).
    pub fn size_bytes(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_every_type() {
        let x: Vec<f32> = (0..3 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03).collect();
        for t in WeightType::ALL {
            let w = HostWeight::quantize(t, 3, 64, &x).unwrap();
            let bytes = w.to_gguf_bytes();
            assert_eq!(bytes.len(), t.gguf_bytes(3, 64));
            assert_eq!(HostWeight::from_gguf_bytes(t, 3, 64, &bytes).unwrap(), w);
            let s = w.slice_rows(1, 3).unwrap();
            assert_eq!(s.dequantize(), w.dequantize()[64..]);
            let err = (0..x.len()).map(|i| (w.dequantize()[i] - x[i]).abs()).fold(0.0, f32::max);
            assert!(err < 0.25, "{t}: {err}");
        }
        assert!(HostWeight::quantize(WeightType::Q4_0, 1, 33, &[0.0; 33]).is_err());
        let w = HostWeight::quantize(WeightType::F16, 1, 33, &x[..33]).unwrap();
        assert_eq!(w.dequantize().len(), 33);
    }

    #[test]
    fn tiled_order_is_a_permutation_that_keeps_blocks_and_scales() {
        // 300 rows: two whole tiles and a short one of 44 rows.
        let (rows, cols) = (300, 96);
        let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.01).collect();
        for t in WeightType::ALL {
            let w = HostWeight::quantize(t, rows, cols, &x).unwrap();
            let tiled = w.tiled_words();
            assert_eq!(tiled.len(), w.words().len(), "{t}");
            let mut seen = vec![false; rows * 3];
            let wpb = t.words_per_block();
            let tiled_weight = HostWeight { words: tiled.clone(), ..w.clone() };
            for row in 0..rows {
                for b in 0..3 {
                    let (g, k) = (row * 3 + b, tiled_block(rows, 3, row, b));
                    assert!(!seen[k], "{t}: block {k} taken twice");
                    seen[k] = true;
                    assert_eq!(tiled[k * wpb..(k + 1) * wpb], w.words()[g * wpb..(g + 1) * wpb], "{t}");
                    assert_eq!(tiled_weight.scale_bits(k), w.scale_bits(g), "{t}");
                }
            }
        }
        // The shader's constants are these.
        let wgsl = include_str!("../kernels/weights.wgsl");
        assert!(wgsl.contains(&format!("const WTILE: u32 = {TEXTURE_TILE_ROWS}u;")));
        assert!(wgsl.contains(&format!("const WTEX_ROW: u32 = {TEXTURE_ROW_TEXELS}u;")));
        // Block 1 of row 0 follows block 0 of every row in the first tile.
        assert_eq!(tiled_block(300, 3, 0, 1), TEXTURE_TILE_ROWS);
        assert_eq!(tiled_block(300, 3, 299, 2), 300 * 3 - 1);
    }
}
