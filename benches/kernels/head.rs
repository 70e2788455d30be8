//! The model's ends: the tied LM head GEMV (vocab x hidden, split in row chunks by
//! `ops::embedding::upload_table` when it exceeds a binding, as the planner does) followed by greedy
//! sampling, per weight type; sampling alone (greedy, top-k, top-p, and under a token mask); the greedy picks
//! of 8 rows at once (a speculative pass checking 7 drafts); and the embedding lookup.

use mobilellm_kernels::ops::embedding::{embedding, upload_table};
use mobilellm_kernels::ops::sample::{
    argmax_rows, sample, sample_masked, write_step, SampleRow, TokenMask, MAX_TOP_LOGPROBS,
};
use mobilellm_kernels::ops::{Dispatch, StepBuffer, StepParams};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::{DType, Tensor};

use crate::common::Bench;
use crate::shapes::{data, models};

pub fn bench_head(b: &mut Bench) {
    let step = StepBuffer::new(&b.gpu).expect("step");
    // Greedy: temperature 0 (top-k and top-p off).
    write_step(&b.gpu, &step, &StepParams { temperature: 0.0, top_p: 1.0, ..Default::default() }).expect("step");
    let token = Tensor::zeros(&b.gpu, DType::U32, &[2 + 2 * MAX_TOP_LOGPROBS as usize]).expect("token");
    for m in models(b) {
        let (vocab, hidden) = (m.vocab, m.hidden);
        let logits = Tensor::from_slice(&b.gpu, &[1, vocab], &data(31, vocab, 4.0)).expect("logits");
        let sampler = sample(&b.gpu, &logits, SampleRow::Last, &step, &token).expect("sample");
        if b.args.wants(&format!("sample greedy {vocab}")) {
            b.add_block("sample", &format!("greedy {vocab}"), &sampler.dispatches(), (vocab * 4) as u64);
        }
        // Sampling proper: top-k 6 (pass 1 by rounds), top-k 40 (a common default) and top-p alone (top_k 0:
        // the 64 best), both by pass 1's filter.
        for (label, top_k, top_p) in [("top-k 6", 6, 1.0), ("top-k 40", 40, 1.0), ("top-p 0.9", 0, 0.9)] {
            let name = format!("{label} {vocab}");
            if !b.args.wants(&format!("sample {name}")) {
                continue;
            }
            let params = StepParams { temperature: 0.8, top_k, top_p, seed: 7, ..Default::default() };
            let sampling_step = StepBuffer::new(&b.gpu).expect("step");
            write_step(&b.gpu, &sampling_step, &params).expect("step");
            let s = sample(&b.gpu, &logits, SampleRow::Last, &sampling_step, &token).expect("sample");
            b.add_block("sample", &name, &s.dispatches(), (vocab * 4) as u64);
        }
        // Constrained decoding: every other id allowed (pass 1 reads one mask bit per logit).
        let half = TokenMask::allowing(vocab, (0..vocab as u32).step_by(2)).expect("mask");
        let mask = half.upload(&b.gpu).expect("mask");
        // And the pick's log-probability (one more pass of exponentials), and the best 5 or 20 candidates'
        // (greedy keeping that many).
        let rows = [
            ("greedy masked", 0.0, 0, 1, 0, 0),
            ("top-k 40 masked", 0.8, 40, 1, 0, 0),
            ("greedy +logprob", 0.0, 0, 0, 1, 0),
            ("greedy +top_logprobs 5", 0.0, 0, 0, 1, 5),
            ("greedy +top_logprobs 20", 0.0, 0, 0, 1, 20),
        ];
        for (label, temperature, top_k, mask_on, logprob, top_logprobs) in rows {
            let name = format!("{label} {vocab}");
            if !b.args.wants(&format!("sample {name}")) {
                continue;
            }
            let params = StepParams {
                temperature,
                top_k,
                top_p: 1.0,
                seed: 7,
                mask: mask_on,
                logprob,
                top_logprobs,
                ..Default::default()
            };
            let masked_step = StepBuffer::new(&b.gpu).expect("step");
            write_step(&b.gpu, &masked_step, &params).expect("step");
            let s = sample_masked(&b.gpu, &logits, SampleRow::Last, &masked_step, &mask, &token).expect("sample");
            b.add_block("sample", &name, &s.dispatches(), (vocab * 4) as u64);
        }
        let rows = 8;
        if b.args.wants(&format!("sample argmax_rows {rows}x{vocab}")) {
            let logits = Tensor::from_slice(&b.gpu, &[rows, vocab], &data(34, rows * vocab, 4.0)).expect("logits");
            let picks = Tensor::zeros(&b.gpu, DType::U32, &[rows]).expect("picks");
            let d = argmax_rows(&b.gpu, &logits, &picks).expect("argmax_rows");
            b.add_block("sample", &format!("argmax_rows {rows}x{vocab}"), &[&d], (rows * vocab * 4) as u64);
        }
        let normed = Tensor::from_slice(&b.gpu, &[1, hidden], &data(32, hidden, 1.0)).expect("normed");
        for wtype in WeightType::ALL {
            let name = format!("{wtype} {vocab}x{hidden}");
            let (want_head, want_embed) =
                (b.args.wants(&format!("lm_head {name}")), b.args.wants(&format!("embedding {name}")));
            if !want_head && !want_embed {
                continue;
            }
            let host = crate::shapes::weight(wtype, vocab, hidden, 33);
            let table = upload_table(&b.gpu, &host).expect("upload table");
            let table_bytes: u64 = table.iter().map(|w| w.size_bytes()).sum();
            if want_head {
                let mut offset = 0;
                let mut ds: Vec<Dispatch> = Vec::new();
                for piece in &table {
                    ds.push(
                        mobilellm_kernels::ops::gemv::gemv(&b.gpu, piece, &normed, &logits, offset, false)
                            .expect("gemv"),
                    );
                    offset += piece.rows();
                }
                let mut list: Vec<&Dispatch> = ds.iter().collect();
                list.extend(sampler.dispatches());
                let bytes = table_bytes + (hidden * 4 + 2 * vocab * 4) as u64;
                let label = format!("{name} +argmax ({} piece{})", table.len(), if table.len() > 1 { "s" } else { "" });
                b.add_block("lm_head", &label, &list, bytes);
            }
            if want_embed {
                for n in [1usize, 64] {
                    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % vocab as u32).collect();
                    let ids = Tensor::from_slice(&b.gpu, &[n], &ids).expect("ids");
                    let out = Tensor::zeros(&b.gpu, DType::F32, &[n, hidden]).expect("out");
                    let e = embedding(&b.gpu, &table, &ids, &out, None).expect("embedding");
                    let row_bytes = table_bytes / vocab as u64;
                    let bytes = n as u64 * (row_bytes + hidden as u64 * 4 + 4);
                    b.add_block("embedding", &format!("{name} n={n}"), &e.dispatches(), bytes);
                }
            }
        }
    }
}
