//! Weight formats against the gguf-py goldens in `tests/data/quant/` (copied from `shared/golden/quant`):
//! our quantizer must give gguf-py's bytes exactly, and our dequantizer its values bit for bit.
//! Needs no device.

use half::{bf16, f16};
use mobilellm_kernels::quant::{HostWeight, WeightType};
use mobilellm_kernels::Error;
use safetensors::SafeTensors;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/quant");

fn load(file: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{file}")).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// One golden case: (name, rows, cols, input, quant bytes, dequant).
type GoldenCase = (String, usize, usize, Vec<f32>, Vec<u8>, Vec<f32>);

/// Every case of a golden file.
fn cases(file: &str, prefix: &str) -> Vec<GoldenCase> {
    let bytes = load(file);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with(prefix) && n.ends_with(".input"))
        .map(|n| n.trim_end_matches(".input").to_string())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "{file}: no {prefix} cases");
    names
        .into_iter()
        .map(|c| {
            let input = st.tensor(&format!("{c}.input")).unwrap();
            let (rows, cols) = (input.shape()[0], input.shape()[1]);
            let quant = st.tensor(&format!("{c}.quant")).unwrap().data().to_vec();
            let dequant = f32s(st.tensor(&format!("{c}.dequant")).unwrap().data());
            (c, rows, cols, f32s(input.data()), quant, dequant)
        })
        .collect()
}

/// Bitwise equality, except that any NaN equals any NaN (the golden's NaN payload is numpy's).
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{what}: element {i}: got {g} ({:#010x}) want {w} ({:#010x})", g.to_bits(), w.to_bits());
    }
}

fn check_file(file: &str, types: &[(&str, WeightType)]) {
    for &(prefix, wtype) in types {
        for (name, rows, cols, input, quant, dequant) in cases(file, prefix) {
            let w = HostWeight::quantize(wtype, rows, cols, &input).unwrap();
            // Quantizing gives gguf-py's bytes exactly (including its sign of zero for an all -0.0 block,
            // the one listed divergence from ggml C: we port gguf-py's rule).
            assert_eq!(w.to_gguf_bytes(), quant, "{name}: quantized bytes");
            assert_same_bits(&format!("{name}: dequantize(quantize)"), &w.dequantize(), &dequant);
            // Reading the golden bytes is lossless both ways.
            let r = HostWeight::from_gguf_bytes(wtype, rows, cols, &quant).unwrap();
            assert_eq!(r, w, "{name}: from_gguf_bytes");
            assert_eq!(r.to_gguf_bytes(), quant, "{name}: to_gguf_bytes(from_gguf_bytes)");
            assert_same_bits(&format!("{name}: dequantize(gguf)"), &r.dequantize(), &dequant);
            // Row slices keep every block bit-exact.
            if rows > 1 {
                let s = r.slice_rows(1, rows).unwrap();
                assert_same_bits(&format!("{name}: slice"), &s.dequantize(), &dequant[cols..]);
                let per_row = quant.len() / rows;
                assert_eq!(s.to_gguf_bytes(), quant[per_row..], "{name}: slice bytes");
            }
        }
    }
}

#[test]
fn q8_0_matches_gguf_py() {
    check_file("q8_0.safetensors", &[("", WeightType::Q8_0)]);
}

#[test]
fn q4_0_matches_gguf_py() {
    check_file("q4_0.safetensors", &[("", WeightType::Q4_0)]);
}

#[test]
fn overflowing_scales_give_gguf_py_inf_and_nan() {
    check_file("overflow.safetensors", &[("q8_0.", WeightType::Q8_0), ("q4_0.", WeightType::Q4_0)]);
    // summary.json: q8_0 32 inf and 0 NaN; q4_0 55 inf and 9 NaN (0 * inf where q = 8).
    for (prefix, wtype, inf, nan) in [("q8_0.", WeightType::Q8_0, 32, 0), ("q4_0.", WeightType::Q4_0, 55, 9)] {
        let (_, rows, cols, input, _, _) = cases("overflow.safetensors", prefix).remove(0);
        let d = HostWeight::quantize(wtype, rows, cols, &input).unwrap().dequantize();
        assert_eq!(d.iter().filter(|v| v.is_infinite()).count(), inf, "{wtype} inf count");
        assert_eq!(d.iter().filter(|v| v.is_nan()).count(), nan, "{wtype} NaN count");
    }
}

#[test]
fn q4_1_roundtrip_and_properties() {
    let rows = 6;
    let cols = 128;
    let mut x: Vec<f32> = (0..rows * cols).map(|i| ((i as f32 * 0.7311).sin() * 3.0) * (1 + i / 128) as f32).collect();
    x[256..288].fill(1.25); // constant block: d = 0, every value is m exactly
    x[288..320].fill(-0.0);
    let w = HostWeight::quantize(WeightType::Q4_1, rows, cols, &x).unwrap();
    let bytes = w.to_gguf_bytes();
    assert_eq!(bytes.len(), rows * cols / 32 * 20);
    assert_eq!(HostWeight::from_gguf_bytes(WeightType::Q4_1, rows, cols, &bytes).unwrap(), w);
    let deq = w.dequantize();
    for (b, (xb, yb)) in x.chunks(32).zip(deq.chunks(32)).enumerate() {
        let raw = &bytes[b * 20..(b + 1) * 20];
        let d = f16::from_le_bytes([raw[0], raw[1]]).to_f32();
        let m = f16::from_le_bytes([raw[2], raw[3]]).to_f32();
        let min = xb.iter().copied().fold(f32::INFINITY, f32::min);
        let max = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(m, f16::from_f32(min).to_f32(), "block {b}: m is f16(min)");
        assert_eq!(d, f16::from_f32((max - min) / 15.0).to_f32(), "block {b}: d is f16((max-min)/15)");
        for (j, (v, y)) in xb.iter().zip(yb).enumerate() {
            let q = (raw[4 + j % 16] >> (4 * (j / 16))) & 15;
            assert_eq!(*y, (q as f32).mul_add(d, m), "block {b} element {j}: q*d + m");
            // Round-to-nearest onto the grid min + k*d, which f16 rounding of d and m may shift by a
            // relative 2^-11 of (max - min) per step, times at most 15 steps, plus m's own rounding.
            let bound = d * 0.5 + (max - min) * 16.0 / 2048.0 + min.abs() / 2048.0 + 1e-7;
            assert!((v - y).abs() <= bound, "block {b} element {j}: {v} vs {y} (bound {bound})");
        }
    }
    assert!(deq[256..288].iter().all(|&v| v == 1.25));
    assert_eq!(w.slice_rows(2, 5).unwrap().dequantize(), deq[2 * cols..5 * cols]);
}

#[test]
fn float_types_are_exact_and_take_any_width() {
    for cols in [1, 7, 33, 576] {
        let x: Vec<f32> = (0..3 * cols).map(|i| (i as f32 * 0.37).cos() * 10.0).collect();
        let w = HostWeight::quantize(WeightType::F32, 3, cols, &x).unwrap();
        assert_same_bits("f32", &w.dequantize(), &x);
        let bytes = w.to_gguf_bytes();
        assert_eq!(bytes.len(), 3 * cols * 4);
        assert_eq!(HostWeight::from_gguf_bytes(WeightType::F32, 3, cols, &bytes).unwrap(), w);
        let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let w16 = HostWeight::from_f16(WeightType::F16, 3, cols, &h).unwrap();
        assert_eq!(HostWeight::quantize(WeightType::F16, 3, cols, &x).unwrap(), w16);
        let want: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        assert_same_bits("f16", &w16.dequantize(), &want);
        assert_eq!(w16.to_gguf_bytes().len(), 3 * cols * 2);
        let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb = HostWeight::from_bf16(WeightType::F32, 3, cols, &b).unwrap();
        let want: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
        assert_same_bits("bf16 -> f32", &wb.dequantize(), &want);
    }
}

#[test]
fn non_finite_inputs_give_defined_results() {
    let mut x = vec![0.5f32; 64];
    x[3] = f32::NAN;
    x[40] = f32::INFINITY;
    x[41] = f32::NEG_INFINITY;
    for t in WeightType::ALL {
        let w = HostWeight::quantize(t, 1, 64, &x).unwrap();
        assert_eq!(w.dequantize().len(), 64);
        assert_eq!(HostWeight::from_gguf_bytes(t, 1, 64, &w.to_gguf_bytes()).unwrap(), w, "{t}");
    }
}

#[test]
fn typed_errors() {
    for t in [WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1] {
        let err = HostWeight::quantize(t, 2, 48, &[0.0; 96]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("48") && err.to_string().contains("32"), "{err}");
        let err = HostWeight::from_gguf_bytes(t, 1, 64, &[0; 10]).unwrap_err();
        assert!(err.to_string().contains("10"), "{err}");
    }
    let err = HostWeight::quantize(WeightType::F32, 2, 3, &[0.0; 5]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let w = HostWeight::quantize(WeightType::Q8_0, 2, 32, &[0.0; 64]).unwrap();
    assert!(w.slice_rows(1, 3).is_err() && w.slice_rows(1, 1).is_err());
    assert_eq!("q4_1".parse::<WeightType>().unwrap(), WeightType::Q4_1);
    assert!("q5_0".parse::<WeightType>().unwrap_err().to_string().contains("q5_0"));
    for t in WeightType::ALL {
        assert_eq!(t.to_string().parse::<WeightType>().unwrap(), t);
    }
}
