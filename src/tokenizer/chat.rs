//! Chat prompts. The crate has no Jinja engine: it recognises the template layouts of the model families it
//! runs and renders them in Rust, checked against jinja2's rendering (`tests/data/chat-templates`); any
//! other template is kept as [`ChatTemplate::Unsupported`] and rendering it is an error.

use crate::error::{Error, Result};

/// How chat prompts are built.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` per message, then `<|im_start|>assistant\n`; when the file's
    /// template inserts a default system message if the first message is not a system one, it is kept here.
    ChatMl {
        /// The default system message of the file's template, if it has one.
        default_system: Option<String>,
    },
    /// Llama-3: BOS, then `<|start_header_id|>role<|end_header_id|>\n\n` + trimmed content + `<|eot_id|>` per
    /// message, then the assistant header. `dated` (Llama-3.1 / 3.2): a system block always comes first,
    /// `Cutting Knowledge Date: December 2023\nToday Date: DD Mon YYYY\n\n` then the system message, if the
    /// chat starts with one (trimmed).
    Llama3 {
        /// Whether the template writes the dated system block.
        dated: bool,
    },
    /// Zephyr (TinyLlama-Chat): `<|role|>\n` + content + EOS + `\n` per user, system or assistant message
    /// (others are skipped), then `<|assistant|>\n` after the last one.
    Zephyr,
    /// A template this crate does not render; holds the template text.
    Unsupported(String),
}

impl ChatTemplate {
    /// Recognises a template's layout (none: plain ChatML).
    pub fn detect(template: Option<&str>) -> ChatTemplate {
        let Some(t) = template else { return ChatTemplate::ChatMl { default_system: None } };
        if t.contains("<|start_header_id|>") && t.contains("<|end_header_id|>") && t.contains("<|eot_id|>") {
            return ChatTemplate::Llama3 { dated: t.contains("Cutting Knowledge Date") };
        }
        if t.contains("<|user|>") && t.contains("<|assistant|>") && t.contains("eos_token") && !t.contains("<|end|>") {
            return ChatTemplate::Zephyr;
        }
        if !(t.contains("<|im_start|>") && t.contains("<|im_end|>")) {
            return ChatTemplate::Unsupported(t.to_owned());
        }
        // A literal system turn inside the template is its default system message (SmolLM2, Qwen2 style:
        // `{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n...<|im_end|>\n' }}`).
        let default_system = ["<|im_start|>system\n", "<|im_start|>system\\n"].iter().find_map(|start| {
            let from = t.find(start)? + start.len();
            let len = t[from..].find("<|im_end|>")?;
            Some(t[from..from + len].replace("\\n", "\n"))
        });
        ChatTemplate::ChatMl { default_system }
    }

    /// The prompt for `(role, content)` messages: `bos` and `eos` are those tokens' texts (for templates that
    /// write them), `today` the date a dated template writes (`DD Mon YYYY`, e.g. `05 Mar 2025`).
    pub fn render(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
        (bos, eos): (&str, &str),
        today: &str,
    ) -> Result<String> {
        let mut s = String::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let turn = |s: &mut String, role: &str, content: &str| {
                    s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
                };
                if let (Some(system), Some((role, _))) = (default_system, messages.first()) {
                    if *role != "system" {
                        turn(&mut s, "system", system);
                    }
                }
                for (role, content) in messages {
                    turn(&mut s, role, content);
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Llama3 { dated } => {
                let turn = |s: &mut String, role: &str, content: &str| {
                    s.push_str(&format!("<|start_header_id|>{role}<|end_header_id|>\n\n{}<|eot_id|>", content.trim()));
                };
                s.push_str(bos);
                let mut rest = messages;
                if *dated {
                    let system = match messages.first() {
                        Some(("system", content)) => {
                            rest = &messages[1..];
                            content.trim()
                        }
                        _ => "",
                    };
                    s.push_str("<|start_header_id|>system<|end_header_id|>\n\n");
                    s.push_str(&format!(
                        "Cutting Knowledge Date: December 2023\nToday Date: {today}\n\n{system}<|eot_id|>"
                    ));
                }
                for (role, content) in rest {
                    turn(&mut s, role, content);
                }
                if add_generation_prompt {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            ChatTemplate::Zephyr => {
                for (role, content) in messages {
                    if matches!(*role, "user" | "system" | "assistant") {
                        s.push_str(&format!("<|{role}|>\n{content}{eos}\n"));
                    }
                }
                // The template writes it inside its loop, after the last message: none for an empty chat.
                if add_generation_prompt && !messages.is_empty() {
                    s.push_str("<|assistant|>\n");
                }
            }
            ChatTemplate::Unsupported(t) => {
                let shown: String = t.chars().take(80).collect();
                return Err(Error::invalid(
                    "tokenizer.chat_template",
                    format!("{shown:?}..."),
                    "a ChatML (<|im_start|>role\\ncontent<|im_end|>), Llama-3 or Zephyr template",
                ));
            }
        }
        Ok(s)
    }
}

/// Today's date in UTC as `DD Mon YYYY` (what transformers' `strftime_now("%d %b %Y")` gives templates).
pub(crate) fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format_date(secs / 86_400)
}

/// `DD Mon YYYY` of a day counted from 1970-01-01 (the proleptic Gregorian calendar; H. Hinnant's
/// `civil_from_days`).
pub(crate) fn format_date(days: u64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{day:02} {} {year}", MONTHS[(month - 1) as usize])
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::format_date(0), "01 Jan 1970");
        assert_eq!(super::format_date(20_152), "05 Mar 2025");
        assert_eq!(super::format_date(11_016), "29 Feb 2000");
        assert_eq!(super::format_date(20_421), "29 Nov 2025");
    }
}
