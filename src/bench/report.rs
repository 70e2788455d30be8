//! A whole run's report: the Markdown table, JSON, and SVG charts.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::device::Gpu;
use crate::error::{Error, Result};

use super::decode::{sharing_ratios, DecodeBench, FamilyTime, InterleavedSharing, SharingRatio};
use super::loadavg;

/// A whole run: device, results, and the layer-sharing comparison.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// [`Gpu::describe`].
    pub device: String,
    /// One entry per configuration.
    pub results: Vec<DecodeBench>,
    /// [`sharing_ratios`] of `results`.
    pub sharing: Vec<SharingRatio>,
    /// [`bench_sharing_interleaved`](super::bench_sharing_interleaved), where it was run.
    pub sharing_interleaved: Vec<InterleavedSharing>,
    /// Load averages when the report was made.
    pub loadavg_end: Option<[f64; 3]>,
}

impl BenchReport {
    /// Collects `results` measured on `gpu`.
    pub fn new(gpu: &Gpu, results: Vec<DecodeBench>) -> BenchReport {
        let sharing = sharing_ratios(&results);
        BenchReport {
            device: gpu.describe(),
            results,
            sharing,
            sharing_interleaved: Vec::new(),
            loadavg_end: loadavg(),
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn load_text(l: Option<[f64; 3]>) -> String {
    l.map_or("?".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
}

/// The report as Markdown: a decode table (one row per configuration and context), the layer-sharing
/// ratios, and the per-family GPU split of the profiled steps.
pub fn markdown_table(report: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Device: {}\n", report.device);
    let _ = writeln!(
        s,
        "| config | prefill tok/s | ctx | ms/token | tok/s | roofline ms | x roofline | KV ms | dispatch floor ms | x (roofline + KV + floor) | GPU ms (ts) | dispatches/step (/layer) | weights / KV / act MiB | copy GB/s | load |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
    for r in &report.results {
        let prefill =
            r.prefill.iter().map(|p| format!("{:.1} (n={})", p.tokens_per_s, p.tokens)).collect::<Vec<_>>().join(", ");
        for d in &r.decode {
            let gpu_ms = if d.profile.is_empty() { "-".into() } else { format!("{:.1}", d.profile_total_ms) };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} ({:.1}) | {:.1} / {:.1} / {:.1} | {:.2} | {} |",
                r.label,
                prefill,
                d.context,
                d.ms_per_token,
                d.tokens_per_s,
                d.roofline_ms,
                d.roofline_multiple,
                d.kv_ms,
                d.dispatch_floor_ms,
                d.floors_multiple,
                gpu_ms,
                r.dispatches_per_step,
                r.dispatches_per_layer,
                mib(r.memory.weights),
                mib(r.memory.kv_cache),
                mib(r.memory.activations),
                d.copy_gbps,
                load_text(r.loadavg),
            );
        }
    }
    if report.results.iter().any(|r| !r.batch.is_empty()) {
        let _ = writeln!(s, "\n| config, batched | ctx | sequences | ms/step | tok/s | x one sequence's tok/s |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for r in &report.results {
            for b in &r.batch {
                let vs = b.vs_one_sequence.map_or("-".to_string(), |x| format!("{x:.2}"));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.1} | {:.1} | {vs} |",
                    r.label, b.context, b.sequences, b.ms_per_step, b.tokens_per_s
                );
            }
        }
    }
    if !report.sharing.is_empty() {
        let _ = writeln!(
            s,
            "\n| layer sharing | ctx | LS / plain ms/token | LS / plain weight bytes | LS 2nd / 1st execution (GPU) | plain odd / even layers (GPU) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.3}"));
        for x in &report.sharing {
            let _ = writeln!(
                s,
                "| {} {} | {} | {:.3} | {:.3} | {} | {} |",
                x.model,
                x.wtype,
                x.context,
                x.ratio,
                x.traffic_ratio,
                ratio(x.second_execution),
                ratio(x.plain_pairs)
            );
        }
    }
    let profiled: Vec<_> = report
        .results
        .iter()
        .flat_map(|r| r.decode.iter().map(move |d| (r, d)))
        .filter(|(_, d)| !d.profile.is_empty())
        .collect();
    if !report.sharing_interleaved.is_empty() {
        let _ = writeln!(
            s,
            "\n| layer sharing, steps interleaved | ctx | steps | plain ms/token | LS ms/token | LS / plain |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for x in &report.sharing_interleaved {
            let _ = writeln!(
                s,
                "| {} {} | {} | {} | {:.1} | {:.1} | {:.3} |",
                x.model, x.wtype, x.context, x.steps, x.plain_ms, x.shared_ms, x.ratio
            );
        }
    }
    let split_text = |families: &[FamilyTime]| {
        let total = families.iter().map(|f| f.ms).sum::<f64>().max(f64::MIN_POSITIVE);
        let parts: Vec<String> =
            families.iter().map(|f| format!("{} {:.1} ({:.0}%)", f.family, f.ms, 100.0 * f.ms / total)).collect();
        parts.join(", ")
    };
    if !profiled.is_empty() {
        let _ = writeln!(s, "\n| config | step | GPU time by kernel family (ms, share) |");
        let _ = writeln!(s, "|---|---|---|");
        for r in report.results.iter().filter(|r| !r.prefill_profile.is_empty()) {
            let step = format!("prefill of {}", r.prefill_profile_tokens);
            let _ = writeln!(s, "| {} | {step} | {} |", r.label, split_text(&r.prefill_profile));
        }
        for (r, d) in profiled {
            let _ = writeln!(s, "| {} | decode at ctx {} | {} |", r.label, d.context, split_text(&d.profile));
        }
    }
    let _ = writeln!(s, "\nLoad average at the end: {}", load_text(report.loadavg_end));
    s
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) }
}

/// Writes the report as pretty JSON.
pub fn write_json(report: &BenchReport, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| io_error(path, e))?;
    std::fs::write(path, json).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// Horizontal bars on a log or linear axis, one per label, with optional marker lines
/// (`markers[i]` drawn across bar `i`).
fn bar_chart(
    path: &Path,
    title: &str,
    axis: &str,
    bars: &[(String, f64)],
    markers: Option<(&str, &[f64])>,
    log: bool,
) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| io_error(path, e);
    let n = bars.len();
    let height = (120 + 34 * n) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let values = bars.iter().map(|b| b.1).chain(markers.iter().flat_map(|m| m.1.iter().copied()));
    let finite: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    let hi = finite.iter().copied().fold(f64::MIN_POSITIVE, f64::max) * 1.3;
    // Bar i sits in segment n-1-i (the first bar on top). `0..=top` has top+1 segments (the last ends at
    // `Last`); plotters draws no labels for a one-value range, so one bar gets an empty second slot.
    let top = n.saturating_sub(1).max(1);
    let slot = move |i: usize| {
        let p = n - 1 - i;
        (SegmentValue::Exact(p), if p < top { SegmentValue::Exact(p + 1) } else { SegmentValue::Last })
    };
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(p) if *p < n => bars[n - 1 - p].0.clone(),
        _ => String::new(),
    };
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 20)).margin(14).x_label_area_size(44).y_label_area_size(260);
    // One drawing routine over either x axis: the element types differ only in the coordinate.
    macro_rules! draw {
        ($chart:expr, $lo:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(top + 1)
                .y_label_formatter(&label_of)
                .x_desc(axis)
                .draw()
                .map_err(|e| err(&e))?;
            chart
                .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                    let (a, b) = slot(i);
                    let mut r = Rectangle::new([($lo, a), (v.max($lo), b)], BLUE.mix(0.6).filled());
                    r.set_margin(5, 5, 0, 0);
                    r
                }))
                .map_err(|e| err(&e))?
                .label("measured")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BLUE.mix(0.6).filled()));
            if let Some((name, marks)) = markers {
                chart
                    .draw_series(marks.iter().enumerate().map(|(i, m)| {
                        let (a, b) = slot(i);
                        PathElement::new(vec![(m.max($lo), a), (m.max($lo), b)], RED.stroke_width(3))
                    }))
                    .map_err(|e| err(&e))?
                    .label(name)
                    .legend(|(x, y)| PathElement::new(vec![(x + 8, y - 7), (x + 8, y + 7)], RED.stroke_width(3)));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if log {
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min).min(hi) / 2.0;
        let chart = builder.build_cartesian_2d((lo..hi).log_scale(), (0..top).into_segmented()).map_err(|e| err(&e))?;
        draw!(chart, lo);
    } else {
        let chart = builder.build_cartesian_2d(0.0..hi, (0..top).into_segmented()).map_err(|e| err(&e))?;
        draw!(chart, 0.0);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// An SVG of decode ms/token per configuration and context (log axis), with each point's roofline
/// (weight bytes ÷ the copy bandwidth measured between its steps) drawn across its bar.
pub fn plot_decode_svg(report: &BenchReport, path: &Path) -> Result<()> {
    let mut bars = Vec::new();
    let mut roof = Vec::new();
    for r in &report.results {
        for d in &r.decode {
            bars.push((format!("{} @{}", r.label, d.context), d.ms_per_token));
            roof.push(d.roofline_ms);
        }
    }
    if bars.is_empty() {
        return Err(Error::invalid("decode results to plot", 0, "at least one decode point"));
    }
    let title = format!("Decode ms/token ({})", report.device.split(" (").next().unwrap_or(&report.device));
    bar_chart(path, &title, "ms per token (log scale)", &bars, Some(("roofline (weights / copy GB/s)", &roof)), true)
}

/// Reads the per-kernel benchmark's JSON (`benches/kernels.rs`: `{"device", "rows": [{family, name,
/// gbps, copy_gbps, frac_of_copy, ...}]}`), tolerating missing fields: rows may be the top-level array,
/// the fraction may be absent (then `gbps / copy_gbps`), rows without a usable number are skipped.
/// Returns `(label, fraction of copy)` pairs.
pub fn read_kernels_json(path: &Path) -> Result<Vec<(String, f64)>> {
    use serde_json::Value;
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    let rows = match &json {
        Value::Array(a) => a.as_slice(),
        v => v.get("rows").or_else(|| v.get("results")).and_then(Value::as_array).map_or(&[][..], Vec::as_slice),
    };
    let num = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64);
    let text_of = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(rows
        .iter()
        .filter_map(|r| {
            let frac = num(r, "frac_of_copy").or_else(|| num(r, "fraction_of_copy")).or_else(|| {
                let (g, c) = (num(r, "gbps")?, num(r, "copy_gbps")?);
                (c > 0.0).then_some(g / c)
            })?;
            let label = [text_of(r, "family"), text_of(r, "name").or_else(|| text_of(r, "kernel"))]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            frac.is_finite().then_some((label, frac))
        })
        .collect())
}

/// An SVG of each kernel's GB/s as a fraction of the copy's, from `kernels_json`; returns the number of
/// kernels drawn (0: nothing to draw, no file written).
pub fn plot_kernels_svg(kernels_json: &Path, path: &Path) -> Result<usize> {
    let rows = read_kernels_json(kernels_json)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ones = vec![1.0; rows.len()];
    bar_chart(
        path,
        "Kernel GB/s as a fraction of a plain copy",
        "fraction of copy GB/s",
        &rows,
        Some(("copy", &ones)),
        false,
    )?;
    Ok(rows.len())
}

/// Writes `decode.json`, `decode.md` ([`markdown_table`]) and `decode.svg` into `dir` (created if
/// needed), and `kernels.svg` when `dir/kernels.json` exists; returns the paths written.
pub fn write_reports(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.display().to_string(), source })?;
    let mut written = Vec::new();
    let json = dir.join("decode.json");
    write_json(report, &json)?;
    written.push(json);
    let md = dir.join("decode.md");
    std::fs::write(&md, markdown_table(report))
        .map_err(|source| Error::Io { path: md.display().to_string(), source })?;
    written.push(md);
    if report.results.iter().any(|r| !r.decode.is_empty()) {
        let svg = dir.join("decode.svg");
        plot_decode_svg(report, &svg)?;
        written.push(svg);
    }
    let kernels = dir.join("kernels.json");
    if kernels.exists() {
        let svg = dir.join("kernels.svg");
        if plot_kernels_svg(&kernels, &svg)? > 0 {
            written.push(svg);
        }
    }
    Ok(written)
}
