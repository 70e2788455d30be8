//! The benchmark machinery on the tiny layer-shared checkpoint (`tests/data/tiny-shared`): a profiled
//! step is a real step, the per-step counts add up, reports and charts are written, and the reader of
//! the kernel benchmark's JSON tolerates its variations. Timings themselves are not checked.
mod common;

use std::path::{Path, PathBuf};

use common::gpus;
use mobilellm_kernels::bench::{self, BenchOptions, BenchReport, ContextFill};
use mobilellm_kernels::model::{HostModel, Model, PlanOptions};
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{ops, DType, Error, Tensor};

fn tiny(layer_sharing: bool) -> HostModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-shared");
    let mut host = HostModel::from_safetensors_dir(&dir, WeightType::Q8_0).unwrap();
    host.config.layer_sharing = layer_sharing;
    host
}

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-bench").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn profiled_step_is_a_real_step() {
    let host = tiny(true);
    let options = PlanOptions { context: 32, max_batch: 8, kv_dtype: None };
    for gpu in gpus() {
        let mut a = Model::new(gpu, &host, &options).unwrap();
        let mut b = Model::new(gpu, &host, &options).unwrap();
        let t1 = a.prefill(&[5, 17, 42]).unwrap();
        assert_eq!(b.prefill(&[5, 17, 42]).unwrap(), t1);
        let t2 = a.step(t1).unwrap();
        if !gpu.features().timestamps {
            assert!(matches!(b.profile_step(t1), Err(Error::Unsupported { .. })));
            continue;
        }
        let per_dispatch = b.profile_step_dispatches(t1).unwrap();
        assert_eq!(b.position(), a.position(), "a profiled step advances the position");
        // Same dispatches as a decode step, in the same order, each timed.
        let names: Vec<String> = per_dispatch.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, b.decode_dispatches());
        assert!(per_dispatch.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0));
        assert!(per_dispatch.iter().map(|(_, ms)| ms).sum::<f64>() > 0.0);
        // One range per executed layer, back to back over the layer dispatches; the two executions of a
        // shared layer run the same kernels.
        let ranges = b.decode_layer_ranges();
        assert_eq!(ranges.len(), host.config.executed_layers());
        assert_eq!(ranges[ranges.len() - 1].end - ranges[0].start, b.decode_layer_dispatches());
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        for pair in ranges.chunks_exact(2) {
            assert_eq!(names[pair[0].clone()], names[pair[1].clone()]);
        }
        // The profiled step wrote the same KV entries: the next step's logits are identical (same kernels
        // on the same inputs, only split over more passes).
        let (na, la) = a.step_logits(t2).unwrap();
        let (nb, lb) = b.step_logits(t2).unwrap();
        assert_eq!((na, &la), (nb, &lb));
        // By family: every family of the dispatch list, summing to the same total.
        let families = b.profile_step(nb).unwrap();
        for name in b.decode_dispatches() {
            let family = name.split(':').next().unwrap();
            assert!(families.iter().any(|(f, _)| f == family), "{family} missing from {families:?}");
        }
    }
}

#[test]
fn profiled_prefill_is_a_real_prefill() {
    let host = tiny(false);
    let options = PlanOptions { context: 32, max_batch: 8, kv_dtype: None };
    let gpu = gpus().into_iter().find(|g| g.features().timestamps).expect("a device with timestamps");
    let mut a = Model::new(gpu, &host, &options).unwrap();
    let mut b = Model::new(gpu, &host, &options).unwrap();
    let prompt = [5, 17, 42, 7, 99];
    let t1 = a.prefill(&prompt).unwrap();
    let per_dispatch = b.profile_prefill_dispatches(&prompt).unwrap();
    assert_eq!(b.position(), a.position());
    assert!(per_dispatch.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0));
    // Same cache contents: the next step agrees exactly.
    assert_eq!(a.step_logits(t1).unwrap(), b.step_logits(t1).unwrap());
    // One submission at most: a longer prompt is refused and changes nothing.
    assert!(matches!(b.profile_prefill_dispatches(&[1; 9]), Err(Error::InvalidArgument { .. })));
    assert_eq!(b.position(), a.position());
}

#[test]
fn pair_ratio_compares_odd_with_even_layers() {
    // Whole pairs only: the fifth layer has no partner.
    assert_eq!(bench::pair_ratio(&[1.0, 0.5, 3.0, 1.5, 7.0]), Some(0.5));
    assert_eq!(bench::pair_ratio(&[2.0]), None);
    assert_eq!(bench::pair_ratio(&[]), None);
}

#[test]
fn seek_stays_within_the_cache() {
    let gpu = &gpus()[1];
    let mut m = Model::new(gpu, &tiny(false), &PlanOptions { context: 16, max_batch: 4, kv_dtype: None }).unwrap();
    m.seek(12).unwrap();
    assert_eq!(m.position(), 12);
    m.step(3).unwrap();
    assert_eq!(m.position(), 13);
    assert!(matches!(m.seek(17), Err(Error::Capacity { .. })));
}

#[test]
fn weight_traffic_counts_shared_layers_twice() {
    let (plain, shared) = (bench::weight_traffic(&tiny(false)), bench::weight_traffic(&tiny(true)));
    assert_eq!(shared.layers, 2 * plain.layers);
    assert_eq!((shared.embedding_row, shared.head), (plain.embedding_row, plain.head));
    // Tied head: the whole embedding table is read, plus the final norm (hidden 128 f32).
    let host = tiny(false);
    assert_eq!(plain.head, host.embed.size_bytes() + 128 * 4);
    assert_eq!(plain.embedding_row * 512, host.embed.size_bytes());
}

#[test]
fn decode_bench_reports_on_the_tiny_model() {
    let gpu = &gpus()[0];
    let options = BenchOptions {
        prefill_lengths: vec![4, 8],
        contexts: vec![8, 20],
        decode_steps: 2,
        fill: ContextFill::Seek,
        copy_bytes: 1 << 20,
        batch_sequences: vec![1, 3],
        ..BenchOptions::default()
    };
    // More sequences than the plan's rows (the longest prefill, 8): refused before anything runs.
    let too_many = BenchOptions { batch_sequences: vec![9], ..options.clone() };
    let err = bench::bench_decode(gpu, &tiny(false), "tiny", &too_many).unwrap_err();
    assert!(err.to_string().contains("max_batch 8"), "{err}");
    let results: Vec<_> =
        [false, true].into_iter().map(|ls| bench::bench_decode(gpu, &tiny(ls), "tiny", &options).unwrap()).collect();
    for r in &results {
        assert_eq!(r.prefill.iter().map(|p| p.tokens).collect::<Vec<_>>(), [4, 8]);
        assert!(r.prefill.iter().all(|p| p.submissions == 1 && p.tokens_per_s > 0.0));
        // Context 8 is reached by the timed prefill of 8, then one warm-up step.
        assert_eq!(r.decode.iter().map(|d| d.context).collect::<Vec<_>>(), [9, 21]);
        assert_eq!(r.executed_layers, if r.layer_sharing { 8 } else { 4 });
        assert!(r.dispatches_per_layer >= 5.0 && r.dispatches_per_layer <= 6.0);
        assert!(r.dispatches_per_step as f64 > r.dispatches_per_layer * r.executed_layers as f64);
        assert!(r.roofline_ms > 0.0 && r.copy.gbps > 0.0);
        // Each point's roofline comes from the copies timed between its own steps.
        for d in &r.decode {
            assert!(d.copy_gbps > 0.0 && d.roofline_ms > 0.0);
            assert!((d.roofline_multiple * d.roofline_ms - d.ms_per_token).abs() <= 1e-9 * d.ms_per_token);
            // The dispatch floor is a real timing, and the two floors together bound the step from below
            // more tightly than the roofline alone.
            assert!(d.dispatch_floor_ms > 0.0 && d.dispatch_floor_ms.is_finite(), "{}", d.dispatch_floor_ms);
            let floors = d.roofline_ms + d.kv_ms + d.dispatch_floor_ms;
            assert!((d.floors_multiple * floors - d.ms_per_token).abs() <= 1e-9 * d.ms_per_token);
            assert!(d.floors_multiple < d.roofline_multiple);
        }
        assert!(r.decode.iter().all(|d| d.profile.is_empty() != gpu.features().timestamps));
        // K and V of every executed layer (2 KV heads of 32) at each position the median of 2 steps reads.
        let kv_size = if gpu.features().f16 { 2 } else { 4 };
        let kv: Vec<u64> = r.decode.iter().map(|d| d.kv_read_bytes).collect();
        let per_position = (r.executed_layers * 2 * 2 * 32 * kv_size) as u64;
        assert_eq!(kv, [11 * per_position, 23 * per_position], "{kv:?}");
        // Batches at the first context, after the same warm-up step as the one-sequence decode.
        assert_eq!(
            r.batch.iter().map(|b| (b.sequences, b.context, b.steps)).collect::<Vec<_>>(),
            [(1, 9, 2), (3, 9, 2)]
        );
        for b in &r.batch {
            assert!((b.tokens_per_s * b.ms_per_step - 1e3 * b.sequences as f64).abs() <= 1e-6 * b.tokens_per_s);
            assert!(b.ms_min <= b.ms_per_step && b.vs_one_sequence.is_some_and(|x| x > 0.0 && x.is_finite()));
        }
        // The memory report is the one-sequence model's, taken before the batches' cache.
        assert!(r.memory.kv_cache < 2 * (r.executed_layers * 2 * 2 * 32 * kv_size * r.kv_capacity) as u64);
    }
    let mut report = BenchReport::new(gpu, results);
    assert_eq!(report.sharing.len(), 2);
    assert!(report.sharing[0].traffic_ratio > 1.0 && report.sharing[0].traffic_ratio < 2.0);
    // Interleaved: both models at each context (seeked, then the warm-up step), every step timed.
    report.sharing_interleaved = bench::bench_sharing_interleaved(gpu, &tiny(false), "tiny", &options).unwrap();
    let contexts: Vec<usize> = report.sharing_interleaved.iter().map(|x| x.context).collect();
    assert_eq!(contexts, [9, 21]);
    assert!(report.sharing_interleaved.iter().all(|x| x.steps == 2 && x.ratio > 0.0 && x.ratio.is_finite()));
    let table = bench::markdown_table(&report);
    assert!(table.contains("tiny q8_0 LS") && table.contains("tiny q8_0 plain"), "{table}");
    assert!(table.contains("steps interleaved"), "{table}");
    assert!(table.contains("dispatch floor ms"), "{table}");
    assert!(table.contains("| tiny q8_0 LS | 9 | 3 |"), "{table}");
    let dir = out_dir("decode");
    std::fs::write(dir.join("kernels.json"), KERNELS_JSON).unwrap();
    let written = bench::write_reports(&report, &dir).unwrap();
    let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    assert_eq!(names, ["decode.json", "decode.md", "decode.svg", "kernels.svg"]);
    let svg = std::fs::read_to_string(dir.join("decode.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("tiny q8_0 LS @9") && svg.contains("roofline"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("decode.json")).unwrap()).unwrap();
    assert_eq!(json["results"].as_array().unwrap().len(), 2);
}

/// Shaped like `benches/kernels.rs` output, with the variations the reader must tolerate.
const KERNELS_JSON: &str = r#"{"device": "x", "quick": true, "rows": [
  {"family": "gemv", "name": "q4_0 576x576 n=1", "us": 10.0, "gbps": 2.0, "copy_gbps": 4.0, "frac_of_copy": 0.5},
  {"family": "gemm", "name": "q8_0 576x576 n=64", "gbps": 3.0, "copy_gbps": 4.0},
  {"family": "broken", "name": "no numbers"}
]}"#;

#[test]
fn kernels_json_reader_is_tolerant() {
    let dir = out_dir("kernels");
    let path = dir.join("kernels.json");
    std::fs::write(&path, KERNELS_JSON).unwrap();
    let rows = bench::read_kernels_json(&path).unwrap();
    assert_eq!(rows, [("gemv q4_0 576x576 n=1".to_string(), 0.5), ("gemm q8_0 576x576 n=64".to_string(), 0.75)]);
    std::fs::write(&path, r#"[{"name": "copy", "frac_of_copy": 1.0}]"#).unwrap();
    assert_eq!(bench::read_kernels_json(&path).unwrap(), [("copy".to_string(), 1.0)]);
    assert_eq!(bench::plot_kernels_svg(&path, &dir.join("one.svg")).unwrap(), 1);
    assert!(bench::read_kernels_json(Path::new("/nonexistent/kernels.json")).is_err());
}

/// GPU timestamps stay meaningful after a windowed product staged its x as texels (a texture's first
/// write once left lavapipe's timestamps reading ~0): a 64 MiB copy takes longer than a 64 KiB one.
#[test]
fn timestamps_survive_texel_staging() {
    let gpu = &gpus()[0];
    if !gpu.features().timestamps {
        return;
    }
    let host = HostWeight::quantize(WeightType::Q4_0, 64, 256, &vec![0.25; 64 * 256]).unwrap();
    let w = GpuWeight::upload(gpu, &host).unwrap();
    let x = Tensor::zeros(gpu, DType::F32, &[16, 256]).unwrap();
    let y = Tensor::zeros(gpu, DType::F32, &[16, 64]).unwrap();
    let product = ops::gemm::gemm(gpu, &w, &x, &y, 0, false).unwrap();
    ops::run(gpu, &[&product]).unwrap();
    let (small, big) = (bench::CopyProbe::new(gpu, 64 << 10).unwrap(), bench::CopyProbe::new(gpu, 64 << 20).unwrap());
    let best = |p: &bench::CopyProbe| (0..3).map(|_| p.seconds(gpu).unwrap()).fold(f64::INFINITY, f64::min);
    let (s, b) = (best(&small), best(&big));
    assert!(b > 4.0 * s, "64 MiB copy {b} s against 64 KiB {s} s [{}]", gpu.describe());
}
