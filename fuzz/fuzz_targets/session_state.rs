//! Session-state bytes (`SessionState::from_bytes`) from arbitrary input never panic or allocate past the
//! input, and whatever parses writes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::model::SessionState;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = SessionState::from_bytes(data, "fuzz.kv") {
        assert_eq!(state.to_bytes(), data, "a parsed state writes back to its bytes");
    }
});
