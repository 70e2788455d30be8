//! Arbitrary bytes as a GGUF file: parsing never panics; on a file that parses, every accessor a loader
//! uses (metadata getters, llama config, every tensor, the tokenizer, a host model) must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::host::HostModel;
use mobilellm_kernels::model::decode;
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::tokenizer::Tokenizer;

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
    }
    // Building a host model converts tensors; only try it on small files to keep executions fast.
    if file.llama_config().is_ok() && data.len() < 1 << 16 {
        let _ = HostModel::from_gguf(&file, None);
        let _ = HostModel::from_gguf(&file, Some(WeightType::Q8_0));
    }
});
