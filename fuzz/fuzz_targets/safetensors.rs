//! Arbitrary bytes as a `.safetensors` file: opening must never panic, and every tensor the header lists
//! must read (raw and, for float dtypes, widened) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::model::safetensors::Safetensors;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = Safetensors::from_bytes(data.to_vec(), "fuzz.safetensors") else { return };
    for name in st.names() {
        let Ok((_, shape)) = st.dtype_and_shape(name) else { continue };
        let shape = shape.to_vec();
        let _ = st.raw(name);
        let _ = st.tensor_f32(name, &shape);
        let _ = st.tensor_i32(name, &shape);
        let _ = st.tensor_f32(name, &[1]);
    }
});
