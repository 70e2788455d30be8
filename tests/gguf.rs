//! GGUF reader: synthetic files from the crate's writer (roundtrip, every truncation point, corrupt tables,
//! unknown/unsupported types, wrong architecture), and the real SmolLM2 file when it is cached.

#[path = "support/smollm2.rs"]
mod smollm2;

use mobilellm_kernels::model::gguf::{
    names, GgmlType, GgufError, GgufFile, GgufLlamaConfig, GgufWriter, MetaValue, TensorType, ValueType,
};
use mobilellm_kernels::Error;

fn gguf_err(r: mobilellm_kernels::Result<GgufFile>) -> GgufError {
    match r {
        Err(Error::Gguf { error, .. }) => error,
        Err(e) => panic!("expected a GGUF error, got {e}"),
        Ok(f) => panic!("expected a GGUF error, parsed {f:?}"),
    }
}

/// Deterministic filler bytes.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect()
}

fn tiny_config() -> GgufLlamaConfig {
    GgufLlamaConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rope_dim: 16,
        rope_theta: 100000.0,
        rms_norm_eps: 1e-5,
        context_length: 128,
        vocab_size: 5,
        tied_embeddings: true,
        rope_interleaved: true,
    }
}

/// A complete tiny llama model: every tensor name, one type per tensor family, a tokenizer array.
fn tiny_llama() -> GgufWriter {
    tiny_llama_with(tiny_config())
}

/// [`tiny_llama`] with other numbers (attn_k / attn_v stay 32 wide: two KV heads of 16).
fn tiny_llama_with(c: GgufLlamaConfig) -> GgufWriter {
    let (h, f, v, kv) = (c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64, 32u64);
    let mut w = GgufWriter::new();
    w.llama_config(&c);
    w.meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    w.meta_strings("tokenizer.ggml.tokens", &["a", "b", "c", "d", "e"]);
    w.tensor(names::TOKEN_EMBD, TensorType::Q8_0.ggml(), &[h, v], bytes((h * v / 32 * 34) as usize, 1));
    for layer in 0..c.num_layers {
        let t = |part: &str| names::block(layer, part);
        w.tensor_f32(&t("attn_norm"), &[h], &vec![1.0; h as usize]);
        w.tensor(&t("attn_q"), TensorType::Q4_1.ggml(), &[h, h], bytes((h * h / 32 * 20) as usize, 2));
        w.tensor(&t("attn_k"), TensorType::Q4_0.ggml(), &[h, kv], bytes((h * kv / 32 * 18) as usize, 3));
        w.tensor(&t("attn_v"), TensorType::F16.ggml(), &[h, kv], bytes((h * kv * 2) as usize, 4));
        w.tensor(&t("attn_output"), TensorType::BF16.ggml(), &[h, h], bytes((h * h * 2) as usize, 5));
        w.tensor_f32(&t("ffn_norm"), &[h], &vec![1.0; h as usize]);
        w.tensor(&t("ffn_gate"), TensorType::Q8_0.ggml(), &[h, f], bytes((h * f / 32 * 34) as usize, 6));
        w.tensor(&t("ffn_up"), TensorType::Q8_0.ggml(), &[h, f], bytes((h * f / 32 * 34) as usize, 7));
        w.tensor(&t("ffn_down"), TensorType::Q4_1.ggml(), &[f, h], bytes((h * f / 32 * 20) as usize, 8));
    }
    w.tensor_f32(names::OUTPUT_NORM, &[h], &vec![1.0; h as usize]);
    w
}

#[test]
fn roundtrip_every_value_type_and_tensor_type() {
    let mut w = GgufWriter::new();
    let scalars = vec![
        ("u8", MetaValue::U8(250)),
        ("i8", MetaValue::I8(-7)),
        ("u16", MetaValue::U16(65000)),
        ("i16", MetaValue::I16(-32000)),
        ("u32", MetaValue::U32(4_000_000_000)),
        ("i32", MetaValue::I32(-2_000_000_000)),
        ("f32", MetaValue::F32(1.5e-5)),
        ("bool", MetaValue::Bool(true)),
        ("string", MetaValue::String("héllo ▁ <|im_start|>".into())),
        ("u64", MetaValue::U64(u64::MAX)),
        ("i64", MetaValue::I64(i64::MIN)),
        ("f64", MetaValue::F64(-0.125)),
    ];
    for (k, v) in &scalars {
        w.meta(k, v.clone());
        // An array of each type too.
        w.meta(&format!("array.{k}"), MetaValue::Array(v.value_type(), vec![v.clone(), v.clone()]));
    }
    w.meta("array.empty", MetaValue::Array(ValueType::U32, vec![]));
    let nested = MetaValue::Array(
        ValueType::Array,
        vec![
            MetaValue::Array(ValueType::String, vec![MetaValue::String("x".into())]),
            MetaValue::Array(ValueType::I16, vec![MetaValue::I16(-1), MetaValue::I16(2)]),
        ],
    );
    w.meta("array.nested", nested);
    w.meta("general.alignment", MetaValue::U32(64));
    let types =
        [TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1];
    let mut want = Vec::new();
    for (i, ty) in types.iter().enumerate() {
        let (block, size) = ty.block();
        let dims = [64u64, 3];
        let data = bytes((64 * 3 / block * size) as usize, i as u32);
        w.tensor(&format!("t.{i}"), ty.ggml(), &dims, data.clone());
        want.push((format!("t.{i}"), *ty, dims, data));
    }
    w.tensor("scalar", TensorType::F32.ggml(), &[1], 7.0f32.to_le_bytes().to_vec());

    let dir = std::env::temp_dir().join(format!("mobilellm-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("roundtrip.gguf");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    // Metadata comes back in order with equal values.
    let expected: Vec<_> = {
        let g = GgufFile::from_bytes(w.to_bytes(), "mem").unwrap();
        g.metadata().to_vec()
    };
    assert_eq!(f.metadata(), &expected[..]);
    for (k, v) in &scalars {
        assert_eq!(f.get(k), Some(v), "{k}");
        assert_eq!(f.get(&format!("array.{k}")).unwrap().as_array().unwrap(), &[v.clone(), v.clone()]);
    }
    assert_eq!(f.get("array.empty"), Some(&MetaValue::Array(ValueType::U32, vec![])));
    assert_eq!(f.get_u64("u32").unwrap(), Some(4_000_000_000));
    assert!(f.get_u64("i8").is_err(), "a negative value is not a u64");
    assert!(matches!(f.get_str("u8"), Err(Error::Gguf { error: GgufError::WrongType { .. }, .. })));
    for (name, ty, dims, data) in &want {
        let t = f.tensor(name).unwrap();
        assert_eq!(t.ty, *ty);
        assert_eq!(t.dims, dims);
        assert_eq!(t.shape(), vec![3, 64], "row-major shape is the dims reversed");
        assert_eq!(t.data, &data[..], "{name}");
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.offset % 64, 0);
        // Zero copy: the slice points into the map.
        let base = f.bytes().as_ptr() as usize;
        assert_eq!(t.data.as_ptr() as usize - base, (f.data_offset() + info.offset) as usize);
    }
    assert_eq!(f.tensor("scalar").unwrap().data, 7.0f32.to_le_bytes());
    assert!(matches!(f.tensor("nope"), Err(Error::MissingTensor { .. })));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn synthetic_llama_config_and_tensor_table() {
    let f = GgufFile::from_bytes(tiny_llama().to_bytes(), "tiny").unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.llama_config().unwrap(), tiny_config());
    assert_eq!(f.tensor_infos().len(), 1 + 2 * 9 + 1);
    let q = f.tensor(&names::block(1, "attn_q")).unwrap();
    assert_eq!((q.ty, q.shape()), (TensorType::Q4_1, vec![64, 64]));
    let k = f.tensor(&names::block(0, "attn_k")).unwrap();
    assert_eq!((k.ty, k.dims, k.shape()), (TensorType::Q4_0, &[64u64, 32][..], vec![32, 64]));
    let down = f.tensor(&names::block(0, "ffn_down")).unwrap();
    assert_eq!(down.shape(), vec![64, 96], "ffn_down is [hidden, ffn]");

    // An untied head flips `tied_embeddings`; missing optional keys take llama.cpp's defaults.
    let mut w = tiny_llama();
    w.tensor(names::OUTPUT, TensorType::F32.ggml(), &[64, 5], vec![0; 64 * 5 * 4]);
    w.meta("llama.attention.head_count_kv", MetaValue::U64(4));
    let c = GgufFile::from_bytes(w.to_bytes(), "untied").unwrap().llama_config().unwrap();
    assert!(!c.tied_embeddings);
    assert_eq!(c.num_kv_heads, 4);
}

#[test]
fn every_truncation_point_is_a_typed_error() {
    let (full, layout) = tiny_llama().to_bytes_with_layout();
    GgufFile::from_bytes(full.clone(), "full").unwrap();
    let last_info = *layout.tensor_info_ends.last().unwrap();
    // Every byte of the header, metadata, tensor table and padding; in the data section (all of which fails
    // the same range check) every tensor boundary and a stride through the bytes between, to keep it fast.
    let mut cuts: Vec<usize> = (0..layout.data_offset + 2).collect();
    cuts.extend((layout.data_offset..full.len()).step_by(61));
    for &start in &layout.tensor_starts {
        cuts.extend([start - 1, start, start + 1]);
    }
    cuts.push(full.len() - 1);
    for len in cuts {
        let e = gguf_err(GgufFile::from_bytes(full[..len].to_vec(), "cut"));
        let section = match &e {
            GgufError::Truncated { section, file_len, .. } => {
                assert_eq!(*file_len, len as u64);
                section.clone()
            }
            GgufError::DataOutOfRange { file_len, .. } => {
                assert!(len >= layout.data_offset, "data error at {len} before the data section: {e}");
                assert_eq!(*file_len, len as u64);
                continue;
            }
            other => panic!("truncation at {len} gave {other}"),
        };
        let expect = if len < layout.header_end {
            "header".to_string()
        } else if layout.kv_ends.iter().any(|&end| len < end) {
            "metadata".to_string()
        } else if let Some(i) = layout.tensor_info_ends.iter().position(|&end| len < end) {
            format!("tensor info #{i}")
        } else {
            assert!(len >= last_info && len < layout.data_offset);
            "alignment padding".to_string()
        };
        assert!(
            section.starts_with(&expect) || section.contains(&expect),
            "at {len}: section {section:?}, expected {expect:?}"
        );
    }
}

#[test]
fn truncated_key_and_value_name_their_section() {
    let (full, layout) = tiny_llama().to_bytes_with_layout();
    // Cut in the middle of the third key/value: the section names its key or index.
    let e = gguf_err(GgufFile::from_bytes(full[..layout.kv_ends[1] + 4].to_vec(), "cut"));
    assert!(e.to_string().contains("metadata key #2"), "{e}");
    let e = gguf_err(GgufFile::from_bytes(full[..layout.kv_ends[2] - 1].to_vec(), "cut"));
    assert!(e.to_string().contains("metadata value of `llama."), "{e}");
}

#[test]
fn bad_magic_and_version() {
    let mut b = tiny_llama().to_bytes();
    b[0] = b'X';
    let e = gguf_err(GgufFile::from_bytes(b, "m"));
    assert!(matches!(e, GgufError::BadMagic { got } if &got == b"XGUF"), "{e}");
    for v in [1u32, 4, 0x0300_0000] {
        let mut b = tiny_llama().to_bytes();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_eq!(gguf_err(GgufFile::from_bytes(b, "v")), GgufError::UnsupportedVersion { got: v });
    }
}

#[test]
fn unknown_and_unsupported_tensor_types_are_named() {
    // An id ggml never defined: the size is unknown, so the file cannot be opened.
    let mut w = GgufWriter::new();
    w.tensor("mystery.weight", GgmlType(99), &[32], vec![0; 32]);
    let e = gguf_err(GgufFile::from_bytes(w.to_bytes(), "u"));
    assert_eq!(e, GgufError::UnknownTensorType { name: "mystery.weight".into(), ty: GgmlType(99) });
    assert!(e.to_string().contains("id 99"), "{e}");
    // A removed id is named.
    let mut w = GgufWriter::new();
    w.tensor("old", GgmlType(4), &[32], vec![0; 32]);
    assert!(gguf_err(GgufFile::from_bytes(w.to_bytes(), "u")).to_string().contains("Q4_2"));
    // A valid ggml type this crate does not serve: the file opens, asking for the tensor names the type.
    let mut w = tiny_llama();
    w.tensor("blk.0.extra.weight", GgmlType(12), &[256, 2], vec![0; 2 * 144]);
    let f = GgufFile::from_bytes(w.to_bytes(), "k").unwrap();
    let e = f.tensor("blk.0.extra.weight").unwrap_err();
    assert!(matches!(&e, Error::Gguf { error: GgufError::UnsupportedTensorType { ty: GgmlType(12), .. }, .. }));
    assert!(e.to_string().contains("Q4_K"), "{e}");
    // Rows that are not whole blocks.
    let mut w = GgufWriter::new();
    w.tensor("q", TensorType::Q4_0.ggml(), &[48, 2], vec![0; 100]);
    assert!(matches!(gguf_err(GgufFile::from_bytes(w.to_bytes(), "b")), GgufError::BadDims { .. }));
}

#[test]
fn wrong_architecture_is_named() {
    let mut w = tiny_llama();
    w.meta("general.architecture", MetaValue::String("gemma3".into()));
    let f = GgufFile::from_bytes(w.to_bytes(), "arch").unwrap();
    let e = f.llama_config().unwrap_err();
    assert!(matches!(&e, Error::Gguf { error: GgufError::UnsupportedArchitecture { got }, .. } if got == "gemma3"));
    assert!(e.to_string().contains("gemma3"), "{e}");
}

#[test]
fn missing_or_mistyped_config_keys() {
    let mut w = tiny_llama();
    w.meta("llama.embedding_length", MetaValue::String("576".into()));
    let e = GgufFile::from_bytes(w.to_bytes(), "t").unwrap().llama_config().unwrap_err();
    assert!(
        matches!(&e, Error::Gguf { error: GgufError::WrongType { key, .. }, .. } if key == "llama.embedding_length")
    );
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()));
    let e = GgufFile::from_bytes(w.to_bytes(), "t").unwrap().llama_config().unwrap_err();
    assert!(matches!(&e, Error::Gguf { error: GgufError::MissingKey { .. }, .. }), "{e}");
    let mut w = tiny_llama();
    w.meta("llama.block_count", MetaValue::U32(0));
    let e = GgufFile::from_bytes(w.to_bytes(), "t").unwrap().llama_config().unwrap_err();
    assert!(matches!(&e, Error::Gguf { error: GgufError::BadValue { .. }, .. }), "{e}");
}

#[test]
fn corrupt_offsets_are_typed_errors() {
    let (full, layout) = tiny_llama().to_bytes_with_layout();
    let patch = |i: usize, value: u64| {
        let mut b = full.clone();
        b[layout.offset_fields[i]..layout.offset_fields[i] + 8].copy_from_slice(&value.to_le_bytes());
        gguf_err(GgufFile::from_bytes(b, "p"))
    };
    // Beyond the end, and so large that offset + size overflows.
    assert!(matches!(patch(3, 1 << 40), GgufError::DataOutOfRange { .. }));
    assert!(matches!(patch(3, u64::MAX - 31), GgufError::DataOutOfRange { .. }));
    // Not a multiple of the alignment.
    assert!(matches!(patch(3, 8), GgufError::Misaligned { offset: 8, alignment: 32, .. }));
    // Pointing into the previous tensor.
    let prev_start = (layout.tensor_starts[2] - layout.data_offset) as u64;
    assert!(matches!(patch(3, prev_start), GgufError::Overlap { .. }));
}

#[test]
fn corrupt_tables_are_typed_errors() {
    // Alignment not a power of two.
    let mut w = tiny_llama();
    w.meta("general.alignment", MetaValue::U32(48));
    assert_eq!(gguf_err(GgufFile::from_bytes(w.to_bytes(), "a")), GgufError::BadAlignment { got: 48 });
    // Duplicate tensor name.
    let mut w = GgufWriter::new();
    w.tensor_f32("x", &[1], &[1.0]).tensor_f32("x", &[1], &[2.0]);
    assert!(matches!(gguf_err(GgufFile::from_bytes(w.to_bytes(), "d")), GgufError::DuplicateTensor { .. }));
    // Unknown value type id and absurd counts (must not allocate).
    let mut w = GgufWriter::new();
    w.meta("k", MetaValue::U8(1));
    let (mut b, layout) = w.to_bytes_with_layout();
    let type_pos = layout.header_end + 8 + 1;
    b[type_pos..type_pos + 4].copy_from_slice(&13u32.to_le_bytes());
    assert_eq!(gguf_err(GgufFile::from_bytes(b, "t")), GgufError::UnknownValueType { key: "k".into(), got: 13 });
    let (mut b, layout) = w.to_bytes_with_layout();
    b.truncate(layout.kv_ends[0]); // no zero padding after the last key (it would read as more keys)
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(gguf_err(GgufFile::from_bytes(b, "n")), GgufError::Truncated { .. }));
    let mut w = GgufWriter::new();
    w.meta("arr", MetaValue::Array(ValueType::U64, vec![MetaValue::U64(1)]));
    let (mut b, layout) = w.to_bytes_with_layout();
    let len_pos = layout.header_end + 8 + 3 + 4 + 4;
    b[len_pos..len_pos + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(gguf_err(GgufFile::from_bytes(b, "n")), GgufError::Truncated { .. }));
    // Zero or too many dimensions.
    let mut w = GgufWriter::new();
    w.tensor("z", TensorType::F32.ggml(), &[], vec![]);
    assert!(matches!(gguf_err(GgufFile::from_bytes(w.to_bytes(), "z")), GgufError::BadDimCount { got: 0, .. }));
    // Invalid UTF-8 in a key.
    let mut w = GgufWriter::new();
    w.meta("kk", MetaValue::U8(1));
    let mut b = w.to_bytes();
    b[24 + 8] = 0xff;
    assert!(matches!(gguf_err(GgufFile::from_bytes(b, "u")), GgufError::BadUtf8 { .. }));
}

#[test]
fn real_smollm2_file() {
    // Fetched (and its sha256 checked) like tests/smollm2.rs does: never skipped when the file is missing.
    let path = smollm2::gguf_path();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.bytes().len(), 98_362_432);
    assert_eq!((f.version(), f.alignment(), f.metadata().len(), f.tensor_infos().len()), (3, 32, 33, 272));
    let c = f.llama_config().unwrap();
    assert_eq!(
        c,
        GgufLlamaConfig {
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_dim: 64,
            rope_theta: 100000.0,
            rms_norm_eps: 1e-5, // stored as f32 9.999999747e-06, the nearest f32 to 1e-5
            context_length: 8192,
            vocab_size: 49152,
            tied_embeddings: true,
            rope_interleaved: true,
        }
    );
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), Some("smollm"));
    assert_eq!(f.get_array("tokenizer.ggml.merges").unwrap().unwrap().len(), 48900);
    let embd = f.tensor(names::TOKEN_EMBD).unwrap();
    assert_eq!((embd.ty, embd.dims, embd.shape()), (TensorType::Q8_0, &[576u64, 49152][..], vec![49152, 576]));
    assert_eq!(embd.data.len(), 49152 * 576 / 32 * 34);
    assert!(f.tensor_info(names::OUTPUT).is_none());
    assert_eq!(f.tensor(names::OUTPUT_NORM).unwrap().ty, TensorType::F32);
    let (h, ffn, kv) = (576usize, 1536usize, 192usize);
    for layer in 0..30 {
        for part in names::BLOCK_PARTS {
            let t = f.tensor(&names::block(layer, part)).unwrap();
            let (ty, shape) = match part {
                "attn_norm" | "ffn_norm" => (TensorType::F32, vec![h]),
                "attn_q" | "attn_output" => (TensorType::Q4_1, vec![h, h]),
                "attn_k" | "attn_v" => (TensorType::Q4_1, vec![kv, h]),
                "ffn_gate" | "ffn_up" => (TensorType::Q4_1, vec![ffn, h]),
                _ => (TensorType::Q4_1, vec![h, ffn]),
            };
            assert_eq!((t.ty, t.shape()), (ty, shape), "{}", t.name);
        }
    }
    // Every tensor is one of the six served types and the table covers the data section without gaps > alignment.
    let mut infos: Vec<_> = f.tensor_infos().iter().collect();
    infos.sort_by_key(|t| t.offset);
    assert_eq!(infos[0].offset, 0);
    for w in infos.windows(2) {
        assert!(w[1].offset - (w[0].offset + w[0].n_bytes) < 32);
    }
    let last = infos.last().unwrap();
    assert_eq!(f.data_offset() + last.offset + last.n_bytes, 98_362_432);
}

/// RoPE scaling in GGUF files: Llama-3's `rope_freqs.weight` divisors (as llama.cpp's converter writes
/// them) and `llama.rope.scaling.type` `linear` reach the config; `yarn` is refused by name; a
/// `rope_freqs` of the wrong length is a shape error.
#[test]
fn rope_scaling_from_gguf() {
    use mobilellm_kernels::model::host::HostModel;
    let load = |w: &GgufWriter| HostModel::from_gguf(&GgufFile::from_bytes(w.to_bytes(), "t.gguf").unwrap(), None);
    assert!(load(&tiny_llama()).unwrap().config.rope_freq_factors.is_empty());
    let factors = [1.0f32, 1.0, 1.5, 3.0, 8.0, 8.0, 8.0, 8.0];
    let mut w = tiny_llama();
    w.tensor_f32("rope_freqs.weight", &[8], &factors);
    let config = load(&w).unwrap().config;
    assert_eq!(config.rope_freq_factors, factors);
    assert_eq!(config.rope_frequency(3), 100000f64.powf(-6.0 / 16.0) / 3.0);
    w.meta("llama.rope.scaling.type", MetaValue::String("linear".into()));
    w.meta("llama.rope.scaling.factor", MetaValue::F32(2.0));
    let both: Vec<f32> = factors.iter().map(|f| f * 2.0).collect();
    assert_eq!(load(&w).unwrap().config.rope_freq_factors, both);
    let mut w = tiny_llama();
    w.meta("llama.rope.scaling.type", MetaValue::String("yarn".into()));
    let e = load(&w).unwrap_err().to_string();
    assert!(e.contains("yarn") && e.contains("t.gguf"), "{e}");
    let mut w = tiny_llama();
    w.tensor_f32("rope_freqs.weight", &[6], &[1.0; 6]);
    let e = load(&w).unwrap_err().to_string();
    assert!(e.contains("rope_freqs.weight") && e.contains("[8]"), "{e}");
}

/// The types decoded on the CPU (`tests/data/gguf-decode`): random Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1,
/// IQ4_NL and IQ4_XS blocks decode bit for bit as gguf-py's reference dequantizer does; bad lengths are
/// errors.
#[test]
fn cpu_decoded_types_match_gguf_py() {
    use mobilellm_kernels::model::decode;
    use mobilellm_kernels::model::safetensors::Safetensors;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf-decode/decode.safetensors");
    let st = Safetensors::open(path).unwrap();
    let types = [
        ("q2_k", 10, 256),
        ("q3_k", 11, 256),
        ("q4_k", 12, 256),
        ("q5_k", 13, 256),
        ("q6_k", 14, 256),
        ("q5_0", 6, 32),
        ("q5_1", 7, 32),
        ("iq4_nl", 20, 32),
        ("iq4_xs", 23, 256),
    ];
    for (name, id, per_block) in types {
        let raw = st.raw(&format!("{name}.raw")).unwrap();
        let blocks = raw.shape[0];
        let want = st.tensor_f32(&format!("{name}.values"), &[blocks, per_block]).unwrap();
        let got = decode::dequantize(GgmlType(id), raw.bytes, blocks * per_block).unwrap();
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{name}: {differ} of {} values differ", want.len());
        assert!(decode::dequantize(GgmlType(id), &raw.bytes[1..], blocks * per_block).is_err());
        assert!(decode::dequantize(GgmlType(id), raw.bytes, blocks * per_block - 1).is_err());
        assert!(decode::kernel_type(GgmlType(id)).is_some());
    }
    assert!(decode::dequantize(GgmlType(2), &[0; 18], 32).unwrap_err().to_string().contains("Q4_0"));
}

/// A Q4_K_M-style file (K-quant, Q5_0 and IQ4_NL matrices among others) loads: without a conversion a Q4_K
/// matrix becomes Q4_1, the others Q8_0, each its decoded values quantized so; with one, the requested type. Q4_1 holds
/// Q4_K's 16-level sub-block grids: over these random blocks its error against the decoded values is a small
/// fraction of Q4_0's (which loses the minimum) and of the grid step.
#[test]
fn decoded_types_load_as_their_nearest_kernel_type() {
    use mobilellm_kernels::model::decode;
    use mobilellm_kernels::model::host::HostModel;
    use mobilellm_kernels::quant::{HostWeight, WeightType};
    // Rows of 256 (one K-quant block): hidden 256 over 16 heads of 16.
    let c = GgufLlamaConfig { hidden_size: 256, num_heads: 16, ..tiny_config() };
    let (h, f) = (c.hidden_size, c.intermediate_size);
    // ffn_gate ([f, h]) as a Q4_K tensor: f blocks of 144 bytes; ffn_up as Q6_K: f blocks of 210.
    let mut q4k = bytes(h * f / 256 * 144, 9);
    for b in q4k.chunks_mut(144) {
        b[..4].copy_from_slice(&[0x00, 0x1c, 0x00, 0x18]); // d = 2^-8, dmin = 2^-9 (f16)
    }
    let mut q6k = bytes(h * f / 256 * 210, 10);
    for b in q6k.chunks_mut(210) {
        b[208..].copy_from_slice(&[0x00, 0x1c]); // d = 2^-8
    }
    // attn_q ([h, h]) as Q5_0 (22 bytes per 32 values), attn_output as IQ4_NL (18 bytes per 32), as a
    // `Q4_K_M` file stores rows that are not whole K-quant blocks.
    let mut q5_0 = bytes(h * h / 32 * 22, 11);
    for b in q5_0.chunks_mut(22) {
        b[..2].copy_from_slice(&[0x00, 0x1c]);
    }
    let mut iq4_nl = bytes(h * h / 32 * 18, 12);
    for b in iq4_nl.chunks_mut(18) {
        b[..2].copy_from_slice(&[0x00, 0x18]);
        b[2] &= 0xF0; // value 0 at level -127: Q8_0 holds the block exactly
    }
    let src = GgufFile::from_bytes(tiny_llama_with(c).to_bytes(), "src.gguf").unwrap();
    let mut k = GgufWriter::new();
    for (key, value) in src.metadata() {
        k.meta(key, value.clone());
    }
    for info in src.tensor_infos() {
        let (ty, data) = match info.name.as_str() {
            n if n == names::block(0, "ffn_gate") => (GgmlType(12), q4k.clone()),
            n if n == names::block(0, "ffn_up") => (GgmlType(14), q6k.clone()),
            n if n == names::block(0, "attn_q") => (GgmlType(6), q5_0.clone()),
            n if n == names::block(0, "attn_output") => (GgmlType(20), iq4_nl.clone()),
            _ => (info.ggml_type, src.tensor_bytes(&info.name).unwrap().1.to_vec()),
        };
        k.tensor(&info.name, ty, &info.dims, data);
    }
    let file = GgufFile::from_bytes(k.to_bytes(), "k.gguf").unwrap();
    let gate = decode::dequantize(GgmlType(12), &q4k, h * f).unwrap();
    let up = decode::dequantize(GgmlType(14), &q6k, h * f).unwrap();
    let host = HostModel::from_gguf(&file, None).unwrap();
    assert_eq!(host.layers[0].gate_proj, HostWeight::quantize(WeightType::Q4_1, f, h, &gate).unwrap());
    assert_eq!(host.layers[0].up_proj, HostWeight::quantize(WeightType::Q8_0, f, h, &up).unwrap());
    let q = decode::dequantize(GgmlType(6), &q5_0, h * h).unwrap();
    assert_eq!(host.layers[0].q_proj, HostWeight::quantize(WeightType::Q8_0, h, h, &q).unwrap());
    let o = decode::dequantize(GgmlType(20), &iq4_nl, h * h).unwrap();
    assert_eq!(host.layers[0].o_proj.dequantize(), o, "IQ4_NL blocks reaching -127 are Q8_0 exactly");
    let host = HostModel::from_gguf(&file, Some(WeightType::Q8_0)).unwrap();
    assert_eq!(host.layers[0].gate_proj, HostWeight::quantize(WeightType::Q8_0, f, h, &gate).unwrap());
    // How far each kernel type lands from the decoded Q4_K values, as a fraction of their RMS.
    let rms = |v: &[f32]| (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    let error = |wtype| {
        let back = HostWeight::quantize(wtype, f, h, &gate).unwrap().dequantize();
        let diff: Vec<f32> = back.iter().zip(&gate).map(|(a, b)| a - b).collect();
        rms(&diff) / rms(&gate)
    };
    let (q4_1, q4_0) = (error(WeightType::Q4_1), error(WeightType::Q4_0));
    eprintln!("Q4_K as Q4_1: relative RMS error {q4_1:.2e}; as Q4_0: {q4_0:.2e}");
    assert!(q4_1 < q4_0 / 4.0, "Q4_1 {q4_1:.2e} vs Q4_0 {q4_0:.2e}");
}
