//! The JSON recognizer (`constrain::JsonPrefix`) on arbitrary bytes never panics, and calls them a whole
//! document exactly when serde_json parses them (inside the recognizer's depth and whitespace limits; lone
//! surrogate escapes, which serde_json refuses, and numbers past f64's range, where it stops reading, aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::constrain::JsonPrefix;

fuzz_target!(|data: &[u8]| {
    let mut json = JsonPrefix::new();
    let ours = json.push_bytes(data) && json.is_complete();
    let within_limits = data.iter().filter(|&&b| b == b'[' || b == b'{').count() <= 32
        && !data.windows(17).any(|w| w.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')))
        && !data.windows(2).any(|w| w == b"\\u");
    if within_limits {
        // serde_json stops at a number out of f64's range: it has not read the rest, so it says nothing.
        let theirs = match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(_) => Some(true),
            Err(e) if e.to_string().contains("out of range") => None,
            Err(_) => Some(false),
        };
        if let Some(theirs) = theirs {
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(data));
        }
    }
});
