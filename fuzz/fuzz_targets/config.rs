//! Arbitrary text as a `config.json`: parsing never panics, and an accepted config's derived numbers
//! (parameter counts, KV sizes) compute without overflow panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::model::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = ModelConfig::from_json_str(text) {
        let _ = (c.parameter_count(), c.executed_parameter_count(), c.kv_elements_per_position(), c.gqa_group());
        for e in 0..c.executed_layers() {
            let _ = c.unique_layer_of(e);
        }
    }
});
