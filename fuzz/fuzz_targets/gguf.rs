//! Arbitrary bytes as a GGUF file: parsing never panics; on a file that parses, every accessor a loader
//! uses (metadata getters, llama config, every tensor, the tokenizer, a host model) must not panic either,
//! and a model or vocabulary that loads is written back as GGUF and reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::model::gguf::{GgufFile, GgufWriter};
use mobilellm_kernels::model::host::HostModel;
use mobilellm_kernels::model::decode;
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::tokenizer::{Tokenizer, Vocab};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else { return };
    for (key, _) in file.metadata() {
        let _ = (file.get_str(key), file.get_u64(key), file.get_f64(key), file.get_bool(key), file.get_array(key));
    }
    let _ = file.architecture();
    for info in file.tensor_infos() {
        if let Ok(t) = file.tensor(&info.name) {
            let _ = (t.shape(), t.n_elements());
        }
        // K-quant bytes of any content decode (or are refused) without panicking.
        if let (true, Ok((info, bytes))) = (decode::kernel_type(info.ggml_type).is_some(), file.tensor_bytes(&info.name)) {
            let _ = decode::dequantize(info.ggml_type, bytes, info.n_elements() as usize);
        }
    }
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        let ids = tok.encode("Hello, world! 123 <|im_start|> é", true);
        let _ = tok.decode(&ids);
        // Written back as GGUF keys, the vocabulary reads the same wherever the writer reports no loss.
        let mut w = GgufWriter::new();
        if tok.vocab().write_gguf(&mut w).is_empty() {
            let back = GgufFile::from_bytes(w.to_bytes(), "vocab.gguf").expect("written keys parse");
            // Compared as printed: a NaN score equals itself there.
            let again = Vocab::from_gguf(&back).expect("written keys load");
            assert_eq!(format!("{again:?}"), format!("{:?}", tok.vocab()));
        }
    }
    // Building a host model converts tensors; only try it on small files to keep executions fast.
    if file.llama_config().is_ok() && data.len() < 1 << 16 {
        if let Ok(model) = HostModel::from_gguf(&file, None) {
            // Exported and read again: the same model (GGUF layouts are not permuted twice).
            let back = GgufFile::from_bytes(model.to_gguf("fuzz").expect("export").to_bytes(), "export.gguf")
                .expect("an exported file parses");
            let again = HostModel::from_gguf(&back, None).expect("an exported model loads");
            assert_eq!(again.fingerprint(), model.fingerprint(), "export changed the model");
        }
        let _ = HostModel::from_gguf(&file, Some(WeightType::Q8_0));
    }
});
