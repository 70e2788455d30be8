// Weight-matrix reads for every weight type (`#include weights`), the GPU twin of `src/quant.rs`.
// Exactly one of W_F32 W_F16 W_Q8_0 W_Q4_0 W_Q4_1 is set. The includer declares
//     @group(0) @binding(N) var<storage, read> weights: array<u32>;
// or, with WTEX (weights in an rgba32uint texture, `WeightStorage::Texture`),
//     @group(0) @binding(N) var weights_tex: texture_2d<u32>;
// (with IMGREAD `texture_storage_2d<rgba32uint, read>`: a read-only storage texture, `TextureReads::Storage`)
// and passes a `WeightDesc` (filled by `GpuWeight::desc()`, usually part of its params uniform).
// Every read goes through `wquad` (4 aligned words) or `wword`: on lavapipe a texel fetch is a SIMD
// gather while each storage-buffer word is a per-lane scalar loop, so quads are fetched whole.
//
// Layout (see src/quant.rs): block g = weight_block(desc, row, b) of 32 columns has its quants at word
// g * WPB (f32 32 words, f16 16, q8_0 8, q4_0/q4_1 4 = GGUF's 16 nibble bytes: byte j = element j low
// nibble, element j+16 high nibble); scales start at word desc.scale_offset (q8_0/q4_0: f16 d, two per
// word, low half for even g; q4_1: one word d | m << 16). f32/f16 rows are zero-padded to whole blocks.
// f16 is read with unpack2x16float, so no device f16 feature is needed.

#if WEIGHTS_STANDALONE
// Only for compiling this file on its own (portability test); includers declare `weights` themselves.
#if WTEX
#if IMGREAD
@group(0) @binding(0) var weights_tex: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(0) var weights_tex: texture_2d<u32>;
#endif
#else
@group(0) @binding(0) var<storage, read> weights: array<u32>;
#endif
#endif

#if WTEX
// Texels per texture row (`quant::TEXTURE_ROW_TEXELS`): word o is component o % 4 of texel o / 4.
const WTEX_ROW: u32 = 4096u;

fn wquad(t: u32) -> vec4<u32> {
#if IMGREAD
    return textureLoad(weights_tex, vec2<u32>(t % WTEX_ROW, t / WTEX_ROW));
#else
    return textureLoad(weights_tex, vec2<u32>(t % WTEX_ROW, t / WTEX_ROW), 0);
#endif
}

fn wword(o: u32) -> u32 {
    return wquad(o >> 2u)[o & 3u];
}
#else
// Words 4t .. 4t+3.
fn wquad(t: u32) -> vec4<u32> {
    let o = 4u * t;
    return vec4<u32>(weights[o], weights[o + 1u], weights[o + 2u], weights[o + 3u]);
}

fn wword(o: u32) -> u32 {
    return weights[o];
}
#endif

struct WeightDesc {
    rows: u32,
    cols: u32,
    blocks: u32,
    scale_offset: u32,
}

#if W_F32
const WPB: u32 = 32u;
#elif W_F16
const WPB: u32 = 16u;
#elif W_Q8_0
const WPB: u32 = 8u;
#else
const WPB: u32 = 4u;
#endif

// (d, m) of block g: the scale and the additive minimum (m = 0 except Q4_1).
fn weight_scale(desc: WeightDesc, g: u32) -> vec2<f32> {
#if W_Q8_0 || W_Q4_0
    let pair = unpack2x16float(wword(desc.scale_offset + (g >> 1u)));
    return vec2<f32>(select(pair.x, pair.y, (g & 1u) == 1u), 0.0);
#elif W_Q4_1
    return unpack2x16float(wword(desc.scale_offset + g));
#else
    return vec2<f32>(1.0, 0.0);
#endif
}

// Quant word k of a block as 4 values: q8_0 signed bytes; q4 low nibbles (hi = false) or high nibbles.
fn weight_i8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(bitcast<i32>(w)) << vec4<u32>(24u, 16u, 8u, 0u) >> vec4<u32>(24u));
}

fn weight_u4x4(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
}

#if WTEX
// Rows per tile of a texture weight (`quant::TEXTURE_TILE_ROWS`).
const WTILE: u32 = 128u;
#endif

// Index of the block of `row` at columns 32*block.. in the quant and scale regions.
// Buffers keep each row's blocks together (GPU threads of a row read neighbouring blocks, coalesced).
// Textures (CPU drivers) are tiled: within each WTILE rows, block b of every row, then block b+1, so a
// workgroup walking its rows block by block reads one sequential stream (the hardware prefetcher keeps
// up; row-major was a stream per row and ran 1.28x slower once the weights left the CPU's cache).
fn weight_block(desc: WeightDesc, row: u32, block: u32) -> u32 {
#if WTEX
    let tile0 = row - row % WTILE;
    let height = min(WTILE, desc.rows - tile0);
    return tile0 * desc.blocks + block * height + (row - tile0);
#else
    return row * desc.blocks + block;
#endif
}

// One block of x (32 columns) as the dot products below read it: prepared once per block
// (`weight_block_x`) for every row that uses it. The q4 types read each nibble where it lies, with one mask
// and no shift: the element at bits 8c (low nibbles) or 8c + 4 (high nibbles) comes out times 2^(8c) or
// 2^(8c+4), so `v` holds x divided by those powers of two (exact), leaving every product q*x as it was; the
// top nibble is shifted down instead (its mask would exceed i32). On lavapipe each shift is one SIMD
// instruction per weight (~1 in 7 of the GEMV's loop); on GPUs this is a multiply per column per block.
// `sum` is sum(x), the q4 types' offset term. f32/f16/q8_0 use x as it is.
struct BlockX {
    v: array<vec4<f32>, 8>,
    sum: f32,
}

#if W_Q4_0 || W_Q4_1
// Powers of two divided out of x for the in-place nibbles of `weight_u4x4_lo` / `weight_u4x4_hi`.
const Q4_LO_SCALE = vec4<f32>(1.0, 0.00390625, 1.52587890625e-05, 5.9604644775390625e-08);
const Q4_HI_SCALE = vec4<f32>(0.0625, 0.000244140625, 9.5367431640625e-07, 1.0);

// Low nibbles of the 4 bytes of w, each times 2^(8c).
fn weight_u4x4_lo(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w) & vec4<u32>(0xFu, 0xF00u, 0xF0000u, 0xF000000u));
}

// High nibbles of the 4 bytes of w, each times 2^(8c+4) except the top one (c = 3: times 1).
fn weight_u4x4_hi(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w & 0xF0u, w & 0xF000u, w & 0xF00000u, w >> 28u));
}
#endif

fn weight_block_x(x: array<vec4<f32>, 8>) -> BlockX {
#if W_Q4_0 || W_Q4_1
    let xs = ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
    return BlockX(array<vec4<f32>, 8>(x[0] * Q4_LO_SCALE, x[1] * Q4_LO_SCALE, x[2] * Q4_LO_SCALE, x[3] * Q4_LO_SCALE,
                                      x[4] * Q4_HI_SCALE, x[5] * Q4_HI_SCALE, x[6] * Q4_HI_SCALE, x[7] * Q4_HI_SCALE),
                  (xs.x + xs.y) + (xs.z + xs.w));
#else
    return BlockX(x, 0.0);
#endif
}

// Dot product of the 32 weights of `row` at columns 32*block.. with x (f32 accumulation).
fn weight_dot32(desc: WeightDesc, row: u32, block: u32, x: BlockX) -> f32 {
    return weight_dot32_at(desc, weight_block(desc, row, block), x);
}

// The same for block g. Quantized types sum q*x first and scale once: d * sum(q x) (+ m * sum(x) for q4_1).
fn weight_dot32_at(desc: WeightDesc, g: u32, x: BlockX) -> f32 {
#if W_F32 || W_F16
    return weight_dot32_plain(g, x.v);
#else
    return weight_scaled(weight_qsum32(g, x.v), x.sum, weight_scale(desc, g));
#endif
}

// Blocks g .. g+7 at once, g a multiple of 8: in the texture layout (whose tiles hold whole groups of 8
// rows when the row count is a multiple of 8) the same block of 8 consecutive rows, whose 8 scales are
// one aligned texel (q4_1: two), fetched once instead of once per row. Written out without loops, so a
// CPU driver keeps all of it in registers.
fn weight_dot32_x8(desc: WeightDesc, g: u32, bx: BlockX) -> array<f32, 8> {
    let x = bx.v;
#if W_F32 || W_F16
    return array<f32, 8>(weight_dot32_plain(g, x), weight_dot32_plain(g + 1u, x), weight_dot32_plain(g + 2u, x),
                         weight_dot32_plain(g + 3u, x), weight_dot32_plain(g + 4u, x), weight_dot32_plain(g + 5u, x),
                         weight_dot32_plain(g + 6u, x), weight_dot32_plain(g + 7u, x));
#else
    let xs = bx.sum;
    let s = weight_scales8(desc, g);
    return array<f32, 8>(weight_scaled(weight_qsum32(g, x), xs, s[0]), weight_scaled(weight_qsum32(g + 1u, x), xs, s[1]),
                         weight_scaled(weight_qsum32(g + 2u, x), xs, s[2]), weight_scaled(weight_qsum32(g + 3u, x), xs, s[3]),
                         weight_scaled(weight_qsum32(g + 4u, x), xs, s[4]), weight_scaled(weight_qsum32(g + 5u, x), xs, s[5]),
                         weight_scaled(weight_qsum32(g + 6u, x), xs, s[6]), weight_scaled(weight_qsum32(g + 7u, x), xs, s[7]));
#endif
}

#if W_F32 || W_F16
// f32/f16: the 32 weights of block g times x.
fn weight_dot32_plain(g: u32, x: array<vec4<f32>, 8>) -> f32 {
    let t = g * (WPB / 4u);
#if W_F32
    var acc = bitcast<vec4<f32>>(wquad(t)) * x[0];
    acc = fma(bitcast<vec4<f32>>(wquad(t + 1u)), x[1], acc);
    acc = fma(bitcast<vec4<f32>>(wquad(t + 2u)), x[2], acc);
    acc = fma(bitcast<vec4<f32>>(wquad(t + 3u)), x[3], acc);
    acc = fma(bitcast<vec4<f32>>(wquad(t + 4u)), x[4], acc);
    acc = fma(bitcast<vec4<f32>>(wquad(t + 5u)), x[5], acc);
    acc = fma(bitcast<vec4<f32>>(wquad(t + 6u)), x[6], acc);
    acc = fma(bitcast<vec4<f32>>(wquad(t + 7u)), x[7], acc);
#else
    let a = wquad(t);
    let b = wquad(t + 1u);
    let c = wquad(t + 2u);
    let d = wquad(t + 3u);
    var acc = weight_f16x4(a.x, a.y) * x[0];
    acc = fma(weight_f16x4(a.z, a.w), x[1], acc);
    acc = fma(weight_f16x4(b.x, b.y), x[2], acc);
    acc = fma(weight_f16x4(b.z, b.w), x[3], acc);
    acc = fma(weight_f16x4(c.x, c.y), x[4], acc);
    acc = fma(weight_f16x4(c.z, c.w), x[5], acc);
    acc = fma(weight_f16x4(d.x, d.y), x[6], acc);
    acc = fma(weight_f16x4(d.z, d.w), x[7], acc);
#endif
    return (acc.x + acc.y) + (acc.z + acc.w);
}
#else
// sum(q x) over block g before scaling: q8_0 signed q, q4 the stored nibble (0..15); x as `BlockX.v`.
fn weight_qsum32(g: u32, x: array<vec4<f32>, 8>) -> f32 {
    let t = g * (WPB / 4u);
#if W_Q8_0
    let a = wquad(t);
    let b = wquad(t + 1u);
    var acc = weight_i8x4(a.x) * x[0];
    acc = fma(weight_i8x4(a.y), x[1], acc);
    acc = fma(weight_i8x4(a.z), x[2], acc);
    acc = fma(weight_i8x4(a.w), x[3], acc);
    acc = fma(weight_i8x4(b.x), x[4], acc);
    acc = fma(weight_i8x4(b.y), x[5], acc);
    acc = fma(weight_i8x4(b.z), x[6], acc);
    acc = fma(weight_i8x4(b.w), x[7], acc);
#else
    let w = wquad(t);
    var acc = weight_u4x4_lo(w.x) * x[0];
    acc = fma(weight_u4x4_lo(w.y), x[1], acc);
    acc = fma(weight_u4x4_lo(w.z), x[2], acc);
    acc = fma(weight_u4x4_lo(w.w), x[3], acc);
    acc = fma(weight_u4x4_hi(w.x), x[4], acc);
    acc = fma(weight_u4x4_hi(w.y), x[5], acc);
    acc = fma(weight_u4x4_hi(w.z), x[6], acc);
    acc = fma(weight_u4x4_hi(w.w), x[7], acc);
#endif
    return (acc.x + acc.y) + (acc.z + acc.w);
}

// The block's dot product from sum(q x), sum(x) and its (d, m).
fn weight_scaled(sum_q: f32, sum_x: f32, s: vec2<f32>) -> f32 {
#if W_Q4_0
    // sum((q - 8) x) = sum(q x) - 8 sum(x)
    return (sum_q - 8.0 * sum_x) * s.x;
#elif W_Q4_1
    return sum_q * s.x + s.y * sum_x;
#else
    return sum_q * s.x;
#endif
}

// (d, m) of blocks g .. g+7, g a multiple of 8 (the scale region starts on a texel: it follows whole blocks
// of 4 or 8 words).
fn weight_scales8(desc: WeightDesc, g: u32) -> array<vec2<f32>, 8> {
#if W_Q4_1
    let a = wquad((desc.scale_offset + g) >> 2u);
    let b = wquad(((desc.scale_offset + g) >> 2u) + 1u);
    return array<vec2<f32>, 8>(unpack2x16float(a.x), unpack2x16float(a.y), unpack2x16float(a.z),
                               unpack2x16float(a.w), unpack2x16float(b.x), unpack2x16float(b.y),
                               unpack2x16float(b.z), unpack2x16float(b.w));
#else
    let a = wquad((desc.scale_offset + (g >> 1u)) >> 2u);
    let p = unpack2x16float(a.x);
    let q = unpack2x16float(a.y);
    let r = unpack2x16float(a.z);
    let t = unpack2x16float(a.w);
    return array<vec2<f32>, 8>(vec2<f32>(p.x, 0.0), vec2<f32>(p.y, 0.0), vec2<f32>(q.x, 0.0), vec2<f32>(q.y, 0.0),
                               vec2<f32>(r.x, 0.0), vec2<f32>(r.y, 0.0), vec2<f32>(t.x, 0.0), vec2<f32>(t.y, 0.0));
#endif
}
#endif

fn weight_f16x4(lo: u32, hi: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
}

// 4 dequantized weights of `row` at columns 4*col4 .. 4*col4+3 (within the row's padded blocks).
fn weight_load4(desc: WeightDesc, row: u32, col4: u32) -> vec4<f32> {
    let block = col4 >> 3u;
    let k = col4 & 7u;
    let g = weight_block(desc, row, block);
    let t = g * (WPB / 4u);
#if W_F32
    return bitcast<vec4<f32>>(wquad(t + k));
#elif W_F16
    let w = wquad(t + (k >> 1u));
    return select(weight_f16x4(w.x, w.y), weight_f16x4(w.z, w.w), (k & 1u) == 1u);
#elif W_Q8_0
    return weight_i8x4(wword(4u * t + k)) * weight_scale(desc, g).x;
#elif W_Q4_0
    let q = weight_u4x4(wword(4u * t + (k & 3u)) >> ((k >> 2u) * 4u));
    return (q - vec4<f32>(8.0)) * weight_scale(desc, g).x;
#else
    let q = weight_u4x4(wword(4u * t + (k & 3u)) >> ((k >> 2u) * 4u));
    let s = weight_scale(desc, g);
    return fma(q, vec4<f32>(s.x), vec4<f32>(s.y));
#endif
}
