//! Kernel sources and the one mechanism that makes their variants.
//!
//! A kernel file in `kernels/` is plain WGSL plus line-level directives:
//! `#if EXPR`, `#elif EXPR`, `#else`, `#endif`, where `EXPR` is a flag name, `!NAME`, or names
//! joined by `||` or `&&` (not mixed). A [`ShaderVariant`] names the flags that are on and a set of
//! `u32` constants; preprocessing keeps the selected lines and prepends `const NAME: u32 = V;` for
//! each constant (after any `enable` directives, which WGSL requires first). Tuning knobs
//! (workgroup sizes, rows per workgroup) are such constants, so they also size workgroup arrays.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

/// One kernel family's WGSL source, embedded in the binary, and the variant space it accepts.
#[derive(Debug)]
pub struct KernelSource {
    /// File stem in `kernels/`, e.g. `rms_norm`.
    pub name: &'static str,
    /// The WGSL text with directives.
    pub source: &'static str,
    /// Independent on/off flags (every combination is valid).
    pub flags: &'static [&'static str],
    /// Groups of mutually exclusive flags; exactly one of each group is set.
    pub choices: &'static [&'static [&'static str]],
    /// Constants every variant must define, with a representative value for portability tests.
    pub consts: &'static [(&'static str, u32)],
}

macro_rules! kernel {
    ($name:literal, flags: $flags:expr, choices: $choices:expr, consts: $consts:expr) => {
        KernelSource {
            name: $name,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/", $name, ".wgsl")),
            flags: $flags,
            choices: $choices,
            consts: $consts,
        }
    };
}

/// The weight-type flags shared by every kernel that reads a weight matrix.
pub const WEIGHT_FLAGS: &[&str] = &["W_F32", "W_F16", "W_Q8_0", "W_Q4_0", "W_Q4_1"];

/// Workgroup reductions (sum, max), included by other kernels.
pub static REDUCE: KernelSource = kernel!("reduce", flags: &["SUBGROUPS"], choices: &[], consts: &[("WG", 64)]);
/// RMSNorm over rows (`VEC4`: rows as vec4, for widths that are multiples of 4).
pub static RMS_NORM: KernelSource =
    kernel!("rms_norm", flags: &["SUBGROUPS", "VEC4"], choices: &[], consts: &[("WG", 128)]);
/// Elementwise add, the unfused FFN chain's silu_mul, and copy.
pub static ELEMENTWISE: KernelSource = kernel!("elementwise", flags: &[], choices: &[], consts: &[("WG", 256)]);

/// Grouped-query attention over the KV cache: decode (optionally split over the sequence), merge, prefill,
/// and `decode_lanes` for CPU drivers (`WL` lanes per KV head; `QUNI`: q read as a uniform of `QV4` vec4), and
/// with SUBGROUPS `prefill_lanes` for CPU drivers (8 query rows per workgroup, K/V shared by broadcasts);
/// `BATCH`: decode rows of several sequences, each row's sequence and position from a table.
pub static ATTENTION: KernelSource = kernel!(
    "attention",
    flags: &["F16", "SPLIT", "QUNI", "SUBGROUPS", "KVTEX", "IMGREAD", "BATCH"],
    choices: &[],
    consts: &[("WG", 64), ("MWG", 64), ("G", 3), ("HD", 64), ("TK", 16), ("WL", 16), ("QV4", 144)]
);

/// Token sampling: greedy / temperature / top-k / top-p from one logits row (two passes).
pub static SAMPLE: KernelSource = kernel!("sample", flags: &[], choices: &[], consts: &[("WG", 256), ("MAX_K", 64), ("SORT", 1024), ("FILTER_ABOVE", 6), ("MAX_GROUPS", 64)]);
/// Weight-matrix reads for every weight type (`#include weights`; see `src/quant.rs` for the layout).
/// `WEIGHTS_STANDALONE` (a one-member group, so always on when compiled alone) declares the `weights`
/// binding that includers declare themselves.
pub static WEIGHTS: KernelSource =
    kernel!("weights", flags: &["WTEX", "IMGREAD"], choices: &[WEIGHT_FLAGS, &["WEIGHTS_STANDALONE"]], consts: &[]);

/// Fused RMSNorm + Q|K|V projection + RoPE + KV-cache write: the `qkv_rope` entry, `rope_cache` (the tail
/// after a separate GEMV), and with LANES the `qkv_rope_lanes` entry for CPU drivers (`LWG` lanes, each 8 rows
/// of each of two head slots; x and the norm weight as uniforms of `XUV4` / `NUV4` vec4; `XBCAST`: x shared
/// by broadcasts; `BATCH`: `rope_cache` rows of several sequences, each row's sequence and position from a
/// table).
pub static QKV_ROPE: KernelSource = kernel!(
    "qkv_rope",
    flags: &["SUBGROUPS", "F16", "WTEX", "KVTEX", "IMGREAD", "LANES", "XBCAST", "BATCH"],
    choices: &[WEIGHT_FLAGS, &["ROPE_HALVES", "ROPE_INTERLEAVED"]],
    consts: &[("WG", 64), ("RWG", 8), ("HD", 64), ("XV4", 400), ("LWG", 8), ("XUV4", 144), ("NUV4", 144)]
);

/// Matrix-vector products for every weight type (`WG` threads, `TPR` threads per row, `RPT` rows per thread;
/// `XUNI`: x and the norm weight read as uniforms of `XV4` / `NV4` vec4; entry `gemv_window` (needs XUNI):
/// a window of `XN` vectors, 8 per lane, for prefill on CPU devices; `GROUP8`: a thread's rows 8 at a time
/// with one scale texel per group; `XBCAST`: x shared among lanes by subgroup broadcasts; `QUADS`: a row
/// slot's threads stride over 4-column quads).
pub static GEMV: KernelSource = kernel!("gemv", flags: &["SUBGROUPS", "NORM", "SWIGLU", "WTEX", "XUNI", "XTEX", "GROUP8", "XBCAST", "IMGREAD", "QUADS"], choices: &[WEIGHT_FLAGS],
    consts: &[("WG", 64), ("TPR", 8), ("RPT", 4), ("XV4", 144), ("NV4", 144), ("XN", 1)]);

/// Embedding lookup: token ids to rows of a weight matrix of any type, over row chunks.
pub static EMBEDDING: KernelSource =
    kernel!("embedding", flags: &["STEP_N", "WTEX", "IMGREAD"], choices: &[WEIGHT_FLAGS], consts: &[("WG", 64)]);

/// Matrix-matrix products (prefill) for every weight type: the tiled `gemm` entry, and with ROWS the
/// `gemm_rows` entry (`WG` threads, `TPR` per row slot; 2 rows x 4 vectors per thread).
pub static GEMM: KernelSource = kernel!("gemm", flags: &["WTEX", "IMGREAD", "ROWS", "SUBGROUPS"], choices: &[WEIGHT_FLAGS],
    consts: &[("WG", 64), ("TPR", 8)]);

/// Context shift of a KV cache slot: entries `kv_shift_gather` and `kv_shift_scatter` (`UNIT` elements per
/// scatter invocation; `PACKED16`: f16 pairs per word; `KVTEX`: the slot is a texture).
pub static KV_SHIFT: KernelSource = kernel!("kv_shift", flags: &["KVTEX", "PACKED16"],
    choices: &[&["ROPE_HALVES", "ROPE_INTERLEAVED"]], consts: &[("WG", 64), ("UNIT", 2)]);

/// The per-step uniform struct (`#include step`), mirroring `ops::StepParams`.
pub static STEP: KernelSource = kernel!("step", flags: &[], choices: &[], consts: &[]);

/// Every kernel file, for the portability test and tools. A file in `kernels/` missing here fails that test.
pub fn all_kernels() -> Vec<&'static KernelSource> {
    vec![
        &REDUCE,
        &STEP,
        &RMS_NORM,
        &ELEMENTWISE,
        &WEIGHTS,
        &GEMV,
        &SAMPLE,
        &EMBEDDING,
        &ATTENTION,
        &QKV_ROPE,
        &GEMM,
        &KV_SHIFT,
    ]
}

/// The flags and constants that select one compiled form of a kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShaderVariant {
    flags: BTreeSet<String>,
    consts: BTreeMap<String, u32>,
}

impl ShaderVariant {
    /// An empty variant.
    pub fn new() -> Self {
        Self::default()
    }
    /// Turns a flag on.
    pub fn flag(mut self, name: &str) -> Self {
        self.flags.insert(name.to_string());
        self
    }
    /// Turns a flag on when `on`.
    pub fn flag_if(self, name: &str, on: bool) -> Self {
        if on {
            self.flag(name)
        } else {
            self
        }
    }
    /// Defines a `u32` constant.
    pub fn constant(mut self, name: &str, value: u32) -> Self {
        self.consts.insert(name.to_string(), value);
        self
    }
    /// Whether a flag is on.
    pub fn has(&self, name: &str) -> bool {
        self.flags.contains(name)
    }
    /// The value of a constant, if defined.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.consts.get(name).copied()
    }
    /// A stable text key, e.g. `SUBGROUPS;WG=128`.
    pub fn key(&self) -> String {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let consts: Vec<String> = self.consts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{};{}", flags.join(","), consts.join(","))
    }

    /// Every variant of `kernel` (all flag combinations, one of each choice group, representative constants).
    pub fn enumerate(kernel: &KernelSource) -> Vec<ShaderVariant> {
        let mut out = vec![ShaderVariant::new()];
        for flag in kernel.flags {
            out = out.into_iter().flat_map(|v| [v.clone(), v.flag(flag)]).collect();
        }
        for group in kernel.choices {
            out = out.into_iter().flat_map(|v| group.iter().map(move |f| v.clone().flag(f))).collect();
        }
        for (name, value) in kernel.consts {
            out = out.into_iter().map(|v| v.constant(name, *value)).collect();
        }
        out
    }

    /// Produces plain WGSL for this variant.
    pub fn preprocess(&self, kernel: &KernelSource) -> Result<String> {
        let fail = |line: usize, message: String| Error::Shader {
            kernel: kernel.name.to_string(),
            variant: self.key(),
            message: format!("line {line}: {message}"),
        };
        for (name, _) in kernel.consts {
            if !self.consts.contains_key(*name) {
                return Err(fail(0, format!("constant `{name}` is not defined by the launcher")));
            }
        }
        let mut enables = String::new();
        let mut body = String::new();
        self.expand(kernel, &mut enables, &mut body, 0)?;
        let mut out = enables;
        for (name, value) in &self.consts {
            out.push_str(&format!("const {name}: u32 = {value}u;\n"));
        }
        out.push_str(&body);
        Ok(out)
    }

    fn expand(&self, kernel: &KernelSource, enables: &mut String, body: &mut String, depth: usize) -> Result<()> {
        let fail = |line: usize, message: String| Error::Shader {
            kernel: kernel.name.to_string(),
            variant: self.key(),
            message: format!("line {line}: {message}"),
        };
        // Each frame: (this branch active, some branch already taken, parent active).
        let mut stack: Vec<(bool, bool, bool)> = Vec::new();
        for (i, line) in kernel.source.lines().enumerate() {
            let n = i + 1;
            let trimmed = line.trim_start();
            let active = stack.last().map(|f| f.0).unwrap_or(true);
            if let Some(expr) = trimmed.strip_prefix("#if ") {
                let value = self.eval(expr).map_err(|m| fail(n, m))?;
                stack.push((active && value, value, active));
            } else if let Some(expr) = trimmed.strip_prefix("#elif ") {
                let value = self.eval(expr).map_err(|m| fail(n, m))?;
                let Some(frame) = stack.last_mut() else { return Err(fail(n, "#elif without #if".into())) };
                let take = !frame.1 && value;
                *frame = (frame.2 && take, frame.1 || take, frame.2);
            } else if trimmed.starts_with("#else") {
                let Some(frame) = stack.last_mut() else { return Err(fail(n, "#else without #if".into())) };
                *frame = (frame.2 && !frame.1, true, frame.2);
            } else if trimmed.starts_with("#endif") {
                if stack.pop().is_none() {
                    return Err(fail(n, "#endif without #if".into()));
                }
            } else if let Some(name) = trimmed.strip_prefix("#include ") {
                if active {
                    let name = name.trim();
                    let Some(snippet) = all_kernels().into_iter().find(|k| k.name == name) else {
                        return Err(fail(n, format!("unknown include `{name}`")));
                    };
                    if depth > 4 {
                        return Err(fail(n, format!("includes nested deeper than 4 at `{name}`")));
                    }
                    self.expand(snippet, enables, body, depth + 1)?;
                }
            } else if trimmed.starts_with('#') {
                return Err(fail(n, format!("unknown directive `{trimmed}`")));
            } else if active {
                let target = if trimmed.starts_with("enable ") { &mut *enables } else { &mut *body };
                target.push_str(line);
                target.push('\n');
            }
        }
        if !stack.is_empty() {
            return Err(fail(0, format!("{} unterminated #if", stack.len())));
        }
        Ok(())
    }

    fn eval(&self, expr: &str) -> std::result::Result<bool, String> {
        let expr = expr.trim();
        let term = |t: &str| -> std::result::Result<bool, String> {
            let t = t.trim();
            let (neg, name) = match t.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, t),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad flag name `{name}` in `{expr}`"));
            }
            Ok(self.flags.contains(name) != neg)
        };
        if expr.contains("||") && expr.contains("&&") {
            return Err(format!("mixed || and && in `{expr}`"));
        }
        if expr.contains("||") {
            expr.split("||").try_fold(false, |acc, t| Ok(acc | term(t)?))
        } else {
            expr.split("&&").try_fold(true, |acc, t| Ok(acc & term(t)?))
        }
    }
}

/// Every flag name a kernel's directives mention (for checking the registry is complete).
pub fn flags_used(kernel: &KernelSource) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in kernel.source.lines() {
        let t = line.trim_start();
        let expr = t.strip_prefix("#if ").or_else(|| t.strip_prefix("#elif "));
        if let Some(expr) = expr {
            for part in expr.split(['|', '&']) {
                let name = part.trim().trim_start_matches('!').trim();
                if !name.is_empty() {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST: KernelSource = KernelSource {
        name: "test",
        source: "#if F16\nenable f16;\n#endif\nA\n#if X || Y\nB\n#elif Z\nC\n#else\nD\n#endif\n#if !X\nE\n#if Y && Z\nF\n#endif\n#endif\nG",
        flags: &["F16", "X", "Y", "Z"],
        choices: &[],
        consts: &[("WG", 64)],
    };

    fn lines(v: &ShaderVariant) -> Vec<String> {
        v.preprocess(&TEST).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn selects_branches_and_hoists_enables() {
        let v = ShaderVariant::new().flag("F16").constant("WG", 64);
        assert_eq!(lines(&v), ["enable f16;", "const WG: u32 = 64u;", "A", "D", "E", "G"]);
        let v = ShaderVariant::new().flag("Y").flag("Z").constant("WG", 8);
        assert_eq!(lines(&v), ["const WG: u32 = 8u;", "A", "B", "E", "F", "G"]);
        let v = ShaderVariant::new().flag("Z").flag("X").constant("WG", 8);
        assert_eq!(lines(&v), ["const WG: u32 = 8u;", "A", "B", "G"]);
        let v = ShaderVariant::new().flag("Z").constant("WG", 8);
        assert_eq!(lines(&v), ["const WG: u32 = 8u;", "A", "C", "E", "G"]);
    }

    #[test]
    fn rejects_missing_const_and_unbalanced() {
        assert!(ShaderVariant::new().preprocess(&TEST).is_err());
        static BAD: KernelSource =
            KernelSource { name: "bad", source: "#if X\nA\n", flags: &[], choices: &[], consts: &[] };
        let err = ShaderVariant::new().preprocess(&BAD).unwrap_err().to_string();
        assert!(err.contains("unterminated"), "{err}");
        static BAD2: KernelSource = KernelSource {
            name: "bad2",
            source: "#if X || Y && Z\nA\n#endif\n",
            flags: &[],
            choices: &[],
            consts: &[],
        };
        assert!(ShaderVariant::new().preprocess(&BAD2).is_err());
    }

    #[test]
    fn enumerates_every_combination() {
        assert_eq!(ShaderVariant::enumerate(&TEST).len(), 16);
        assert_eq!(flags_used(&TEST), ["F16", "X", "Y", "Z"].iter().map(|s| s.to_string()).collect());
    }
}
