//! Chat prompts: the tokenizer's Jinja chat template, rendered by minijinja the way transformers'
//! `apply_chat_template` renders it with jinja2 (checked against jinja2's output in
//! `tests/data/chat-templates`).
//!
//! The environment matches transformers': `trim_blocks` and `lstrip_blocks`, a single trailing newline of the
//! template dropped, lenient undefined values, `{% break %}` / `{% continue %}`, Python's string, list and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ...), `raise_exception(message)` (an error naming
//! the message), `strftime_now(format)` (the date given to [`ChatTemplate::render`]) and `tojson` as Python's
//! `json.dumps` writes it. The variables are `messages` (`role` and `content` each), `add_generation_prompt`,
//! `bos_token` and `eos_token`. A run is capped in fuel, so no template can loop for long, and runs on a
//! thread whose stack the deepest value that fuel lets a template build cannot overflow.

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, ErrorKind};

use crate::error::{Error, Result};

/// The template of tokenizers that have none: ChatML, as transformers' old default.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] \
                          + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Instructions one render may run (minijinja's fuel, also charged per 64 bytes a filter or method builds):
/// the heaviest template of `tests/data/chat-templates` over 1 000 messages of 150 bytes needs under
/// 200 000; a runaway loop or a string of a gigabyte (`'x' * 10**9`, `indent(10**9)`) runs out within
/// milliseconds.
const FUEL: u64 = 500_000;

/// Stack of the thread a render runs on. A template can nest a value one level deeper per instruction
/// (`{% set ns.x = [[[ns.x]]] %}` in a loop), so fuel bounds the depth that minijinja then drops, prints
/// and compares recursively: under 500 000 levels, at about 100 bytes of stack each in release builds and
/// 270 in the fuzzing build (measured: the main thread's 8 MiB overflowed at 200 000 and 60 000 levels).
/// Reserved address space, committed only as far as a render goes.
const RENDER_STACK: usize = 256 << 20;

/// A chat template (Jinja source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    source: String,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate { source: CHATML.to_owned() }
    }
}

impl ChatTemplate {
    /// The template `source` (e.g. `tokenizer.chat_template`). It is parsed when rendered: a tokenizer with a
    /// template this crate cannot render still encodes and decodes.
    pub fn new(source: impl Into<String>) -> ChatTemplate {
        ChatTemplate { source: source.into() }
    }

    /// The file's template, or [`CHATML`] when it has none.
    pub fn from_file(template: Option<&str>) -> ChatTemplate {
        template.map_or_else(ChatTemplate::default, ChatTemplate::new)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Parses the template: `Ok` when [`ChatTemplate::render`] can run it (a `raise_exception` it reaches
    /// can still fail a render).
    pub fn check(&self) -> Result<()> {
        environment(Date::from_days(0)).template_from_str(&self.source).map(|_| ()).map_err(template_error)
    }

    /// The prompt for `(role, content)` messages: `bos` and `eos` are those tokens' texts (for templates that
    /// write them), `today` the date `strftime_now` gives.
    pub fn render(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
        (bos, eos): (&str, &str),
        today: Date,
    ) -> Result<String> {
        // On its own thread, whose stack a fuel-bounded render cannot overflow (see RENDER_STACK).
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("chat template".into())
                .stack_size(RENDER_STACK)
                .spawn_scoped(scope, || self.render_here(messages, add_generation_prompt, (bos, eos), today))
                .map_err(|e| Error::Io { path: "the chat template's render thread".into(), source: e })?;
            // A panic there is one here, as it would be without the thread.
            worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn render_here(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
        (bos, eos): (&str, &str),
        today: Date,
    ) -> Result<String> {
        let env = environment(today);
        let template = env.template_from_str(&self.source).map_err(template_error)?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|(role, content)| Value::from_object(Message { role: (*role).into(), content: (*content).into() }))
            .collect();
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        };
        template.render(context).map_err(template_error)
    }
}

/// One message, a map of `role` then `content` (in the order Python's dict keeps them).
#[derive(Debug)]
struct Message {
    role: String,
    content: String,
}

impl Object for Message {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role.as_str())),
            "content" => Some(Value::from(self.content.as_str())),
            _ => None,
        }
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// The environment transformers' `apply_chat_template` builds (see the module docs).
fn environment(today: Date) -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
    // The default delimiters always build.
    env.set_syntax(syntax.unwrap_or_default());
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
    });
    env.add_function("strftime_now", move |format: String| {
        today.strftime(&format).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e))
    });
    env.add_filter("tojson", tojson);
    env
}

fn template_error(e: minijinja::Error) -> Error {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::invalid("chat template", message, "a Jinja chat template this crate renders (see tokenizer::chat)")
}

/// transformers' `tojson`: `json.dumps(value, ensure_ascii=False, indent=indent, separators=separators,
/// sort_keys=sort_keys)`, so with indent: `,` and `: ` between items, without: `, ` and `: `.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(other) => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson separators {other:?}")))
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle { indent, item, key, sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(out)
}

struct JsonStyle {
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
}

fn write_json(
    out: &mut String,
    v: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            let f = f64::try_from(v.clone())?;
            // Python's repr: `1.0`, `inf` as `Infinity`, NaN as `NaN`.
            out.push_str(&match f {
                f if f.is_nan() => "NaN".into(),
                f if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
                f if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
                f => format!("{f}"),
            });
        }
        ValueKind::String => write_json_string(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item);
                }
                newline(out, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item);
                }
                newline(out, depth + 1);
                write_json_string(out, &k.to_string());
                out.push_str(&style.key);
                write_json(out, &v.get_item(k)?, style, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        other => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson of a {other} value")));
        }
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`: `"` `\` and control characters escaped.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A calendar day (UTC), what a template's `strftime_now` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// Days since 1970-01-01.
    days: i64,
}

impl Date {
    /// Today in UTC.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Date::from_days((secs / 86_400) as i64)
    }

    /// The day `days` after 1970-01-01.
    pub fn from_days(days: i64) -> Date {
        Date { days }
    }

    /// `(year, month 1-12, day 1-31)` in the proleptic Gregorian calendar (H. Hinnant's `civil_from_days`).
    pub fn ymd(&self) -> (i64, u32, u32) {
        let z = self.days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(month <= 2), month as u32, day as u32)
    }

    /// The date as Python's `strftime` writes it, for the directives of a date (`%d %e %m %y %Y %b %B %a %A
    /// %j %%`); time directives are at midnight (`%H %M %S` give `00`). Others are an error naming them.
    pub fn strftime(&self, format: &str) -> std::result::Result<String, String> {
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
        let (year, month, day) = self.ymd();
        let month_name = MONTHS[month as usize - 1];
        // 1970-01-01 was a Thursday.
        let weekday = DAYS[(self.days + 3).rem_euclid(7) as usize];
        let day_of_year = self.days - Date::first_of_january(year) + 1;
        let mut out = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('d') => out.push_str(&format!("{day:02}")),
                Some('e') => out.push_str(&format!("{day:2}")),
                Some('m') => out.push_str(&format!("{month:02}")),
                Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
                Some('Y') => out.push_str(&year.to_string()),
                Some('b') => out.push_str(&month_name[..3]),
                Some('B') => out.push_str(month_name),
                Some('a') => out.push_str(&weekday[..3]),
                Some('A') => out.push_str(weekday),
                Some('j') => out.push_str(&format!("{day_of_year:03}")),
                Some('H' | 'M' | 'S') => out.push_str("00"),
                Some('%') => out.push('%'),
                other => {
                    return Err(format!("strftime_now: directive %{} is not supported", other.unwrap_or(' ')));
                }
            }
        }
        Ok(out)
    }

    /// Days since 1970-01-01 of January 1st of `year` (H. Hinnant's `days_from_civil` at month 1, day 1).
    fn first_of_january(year: i64) -> i64 {
        let y = year - 1;
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        // In a year counted from March, January 1st is day 306.
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + 306;
        era * 146_097 + doe - 719_468
    }
}

#[cfg(test)]
mod tests {
    use super::Date;

    #[test]
    fn dates() {
        let f = |days| Date::from_days(days).strftime("%d %b %Y").unwrap();
        assert_eq!(f(0), "01 Jan 1970");
        assert_eq!(f(20_152), "05 Mar 2025");
        assert_eq!(f(11_016), "29 Feb 2000");
        assert_eq!(f(20_421), "29 Nov 2025");
        assert_eq!(
            Date::from_days(20_152).strftime("%A %a %B %j %e %y %H %%").unwrap(),
            "Wednesday Wed March 064  5 25 00 %"
        );
        assert_eq!(Date::from_days(0).strftime("%j %A").unwrap(), "001 Thursday");
        assert_eq!(Date::from_days(11_322).strftime("%j").unwrap(), "366");
        assert!(Date::from_days(0).strftime("%Z").unwrap_err().contains("%Z"));
    }
}
