//! Embedding lookup vs its CPU twin for every weight type, row-chunked tables, step-limited counts and bad ids.
//!
//! Comparisons are bit-exact: a lookup does no arithmetic except dequantization, which is exact in f32 for
//! f32/f16/q8_0/q4_0 (`q*d` with an 8-bit q and an f16 d fits in 24 bits) and one rounding for q4_1
//! (`q*d` exact, then `+ m`), the same on both sides (see `HostWeight::dequantize`).
mod common;

use common::{gpus, random_vec, ShapeRng};
use mobilellm_kernels::ops::embedding::{embedding, upload_table, upload_table_chunked, validate_ids, write_ids};
use mobilellm_kernels::ops::{self, StepBuffer, StepParams};
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{reference, DType, Error, Gpu, Tensor};

fn table(wtype: WeightType, vocab: usize, hidden: usize) -> HostWeight {
    let data: Vec<f32> = random_vec((vocab * 7 + hidden) as u64, vocab * hidden).iter().map(|v| v * 0.1).collect();
    HostWeight::quantize(wtype, vocab, hidden, &data).unwrap()
}

fn ids_for(vocab: usize, n: usize) -> Vec<u32> {
    let mut ids: Vec<u32> =
        random_vec(n as u64 + 3, n).iter().map(|v| ((v * 0.5 + 0.5) * vocab as f32) as u32 % vocab as u32).collect();
    ids[0] = (vocab - 1) as u32;
    if n > 2 {
        ids[1] = 0;
        ids[2] = ids[0]; // a repeated id
    }
    ids
}

fn lookup(gpu: &Gpu, chunks: &[GpuWeight], ids: &[u32], hidden: usize) -> Vec<f32> {
    let ids_gpu = Tensor::from_slice(gpu, &[ids.len()], ids).unwrap();
    let out = Tensor::zeros(gpu, DType::F32, &[ids.len(), hidden]).unwrap();
    let e = embedding(gpu, chunks, &ids_gpu, &out, None).unwrap();
    ops::run(gpu, &e.dispatches()).unwrap();
    out.read::<f32>(gpu).unwrap()
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {i} got {g} want {w}");
    }
}

#[test]
fn every_weight_type_at_model_widths() {
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            for (vocab, hidden, n) in [(700, 576, 9), (300, 960, 1), (49152, 64, 33)] {
                let host = table(wtype, vocab, hidden);
                let ids = ids_for(vocab, n);
                let got = lookup(gpu, &[GpuWeight::upload(gpu, &host).unwrap()], &ids, hidden);
                let what = format!("{wtype} {vocab}x{hidden} n {n} [{}]", gpu.features());
                assert_bits(&what, &got, &reference::embedding(&host, &ids));
            }
        }
    }
}

#[test]
fn float_tables_of_awkward_width() {
    for gpu in gpus() {
        for wtype in [WeightType::F32, WeightType::F16] {
            for hidden in [1, 7, 33, 130] {
                let host = table(wtype, 50, hidden);
                let ids = ids_for(50, 5);
                let got = lookup(gpu, &[GpuWeight::upload(gpu, &host).unwrap()], &ids, hidden);
                assert_bits(&format!("{wtype} width {hidden}"), &got, &reference::embedding(&host, &ids));
            }
        }
    }
}

#[test]
fn row_chunked_table_matches_the_whole() {
    for gpu in gpus() {
        for wtype in [WeightType::F16, WeightType::Q4_1, WeightType::Q8_0] {
            let (vocab, hidden) = (1000, 96);
            let host = table(wtype, vocab, hidden);
            // Uneven chunks, one of a single row.
            let chunks: Vec<GpuWeight> = [(0, 300), (300, 301), (301, 1000)]
                .iter()
                .map(|&(a, b)| GpuWeight::upload(gpu, &host.slice_rows(a, b).unwrap()).unwrap())
                .collect();
            let mut ids = ids_for(vocab, 40);
            ids[3] = 299;
            ids[4] = 300;
            ids[5] = 301;
            let got = lookup(gpu, &chunks, &ids, hidden);
            assert_bits(&format!("{wtype} in 3 chunks"), &got, &reference::embedding(&host, &ids));
            // upload_table keeps a table that fits in one chunk; a small chunk limit splits it into even chunks.
            assert_eq!(upload_table(gpu, &host).unwrap().len(), 1);
            let limit = host.size_bytes() / 4;
            let chunks = upload_table_chunked(gpu, &host, limit).unwrap();
            assert!(chunks.len() >= 4 && chunks.iter().all(|c| c.size_bytes() <= limit), "{wtype}");
            assert_eq!(chunks.iter().map(GpuWeight::rows).sum::<usize>(), vocab);
            let got = lookup(gpu, &chunks, &ids, hidden);
            assert_bits(&format!("{wtype} in {} chunks", chunks.len()), &got, &reference::embedding(&host, &ids));
        }
    }
}

/// Seeded random tables on both devices, bit for bit: every weight type, vocabularies of 1-5000, widths in
/// whole blocks (f32/f16: any), 1-70 ids, and a third of the tables split into random row chunks.
#[test]
fn seeded_random_tables() {
    let mut rng = ShapeRng::new(23);
    for _ in 0..12 {
        let wtype = rng.pick(&WeightType::ALL);
        let vocab = rng.range(1, 5000);
        let hidden = rng.width(wtype, 700, 24);
        let host = table(wtype, vocab, hidden);
        let ids = ids_for(vocab, rng.range(1, 70));
        let mut cuts = vec![0, vocab];
        if vocab > 2 && rng.chance(33) {
            cuts.extend((0..rng.range(1, 3)).map(|_| rng.range(1, vocab - 1)));
            cuts.sort_unstable();
            cuts.dedup();
        }
        for gpu in gpus() {
            let chunks: Vec<GpuWeight> = cuts
                .windows(2)
                .map(|c| GpuWeight::upload(gpu, &host.slice_rows(c[0], c[1]).unwrap()).unwrap())
                .collect();
            let got = lookup(gpu, &chunks, &ids, hidden);
            let what = format!("{wtype} {vocab}x{hidden} n {} cuts {cuts:?} [{}]", ids.len(), gpu.features());
            assert_bits(&what, &got, &reference::embedding(&host, &ids));
        }
    }
}

#[test]
fn step_n_limits_the_tokens_written() {
    for gpu in gpus() {
        let (vocab, hidden, cap) = (64, 32, 8);
        let host = table(WeightType::Q4_0, vocab, hidden);
        let chunks = [GpuWeight::upload(gpu, &host).unwrap()];
        let ids_gpu = Tensor::zeros(gpu, DType::U32, &[cap]).unwrap();
        let out = Tensor::from_slice(gpu, &[cap, hidden], &vec![7.0f32; cap * hidden]).unwrap();
        let step = StepBuffer::new(gpu).unwrap();
        let e = embedding(gpu, &chunks, &ids_gpu, &out, Some(&step)).unwrap();
        let ids = [5u32, 63, 0];
        write_ids(gpu, &ids_gpu, &ids, vocab).unwrap();
        step.write(gpu, &StepParams { n: 3, ..Default::default() });
        ops::run(gpu, &e.dispatches()).unwrap();
        let got = out.read::<f32>(gpu).unwrap();
        assert_bits("first 3 rows", &got[..3 * hidden], &reference::embedding(&host, &ids));
        assert!(got[3 * hidden..].iter().all(|&v| v == 7.0), "rows beyond step.n untouched");
    }
}

#[test]
fn bad_ids_are_rejected_on_the_host_and_clamped_on_the_gpu() {
    let err = validate_ids(&[3, 10, 2], 10).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("10") && err.to_string().contains("position 1"), "{err}");
    validate_ids(&[0, 9], 10).unwrap();
    for gpu in gpus() {
        let host = table(WeightType::Q8_0, 10, 32);
        let chunks = [GpuWeight::upload(gpu, &host).unwrap()];
        let ids_gpu = Tensor::zeros(gpu, DType::U32, &[2]).unwrap();
        assert!(write_ids(gpu, &ids_gpu, &[1, 10], 10).is_err());
        // Written raw, past the check: the kernel clamps to the last row instead of reading out of bounds.
        let ids = [u32::MAX, 10];
        let got = lookup(gpu, &chunks, &ids, 32);
        assert_bits("clamped", &got, &reference::embedding(&host, &[9, 9]));
    }
}

#[test]
fn rejects_bad_operands() {
    let gpu = &gpus()[0];
    let a = GpuWeight::upload(gpu, &table(WeightType::F16, 10, 32)).unwrap();
    let b = GpuWeight::upload(gpu, &table(WeightType::Q8_0, 10, 32)).unwrap();
    let ids = Tensor::zeros(gpu, DType::U32, &[2]).unwrap();
    let out = Tensor::zeros(gpu, DType::F32, &[2, 32]).unwrap();
    let err = embedding(gpu, &[a.clone(), b], &ids, &out, None).unwrap_err();
    assert!(err.to_string().contains("chunk 1"), "{err}");
    let err = embedding(gpu, &[], &ids, &out, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = upload_table_chunked(gpu, &table(WeightType::F32, 10, 32), 64).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let ids_f32 = Tensor::zeros(gpu, DType::F32, &[2]).unwrap();
    let err = embedding(gpu, std::slice::from_ref(&a), &ids_f32, &out, None).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    let out_bad = Tensor::zeros(gpu, DType::F32, &[2, 31]).unwrap();
    let err = embedding(gpu, std::slice::from_ref(&a), &ids, &out_bad, None).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}
