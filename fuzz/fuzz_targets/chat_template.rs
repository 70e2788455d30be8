//! Chat templates from arbitrary text never panic and never run long: the template source, then after a
//! NUL byte the content of the messages it renders (as a user, an assistant and an odd role).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::tokenizer::{ChatTemplate, Date};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(source) = std::str::from_utf8(&data[..split]) else { return };
    let content = String::from_utf8_lossy(data.get(split + 1..).unwrap_or(&[])).into_owned();
    let template = ChatTemplate::new(source);
    let _ = template.check();
    let messages = [("user", content.as_str()), ("assistant", "ok"), ("tool", content.as_str())];
    for n in [0, 1, 3] {
        let _ = template.render(&messages[..n], n != 3, ("<s>", "</s>"), Date::from_days(20_000));
    }
});
