//! Stop strings: generation ends at the first of some texts (OpenAI's `stop`, llama.cpp's reverse prompts),
//! found in the streamed text whatever tokens spell it. Text that may be the start of a stop string is held
//! back until the next text says whether it is.

use crate::error::{Error, Result};

/// Finds stop strings in streamed text (see the module docs).
///
/// ```
/// use mobilellm_kernels::tokenizer::StopStrings;
/// let mut stop = StopStrings::new(&["\nUser:"])?;
/// assert_eq!(stop.push("Paris.\nUs"), "Paris."); // "\nUs" may begin "\nUser:": held back
/// assert_eq!(stop.push("er: and"), ""); // it did: the text before it was all
/// assert!(stop.is_stopped());
/// let mut stop = StopStrings::new(&["\nUser:"])?;
/// assert_eq!(stop.push("Paris.\nUs"), "Paris.");
/// assert_eq!(stop.push("ually"), "\nUsually"); // it did not
/// assert_eq!(stop.finish(), "");
/// # Ok::<(), mobilellm_kernels::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// Stops at any of `stops`; an empty stop string is an error (it would match before any text).
    pub fn new(stops: &[impl AsRef<str>]) -> Result<StopStrings> {
        let stops: Vec<String> = stops.iter().map(|s| s.as_ref().to_string()).collect();
        if let Some(i) = stops.iter().position(String::is_empty) {
            return Err(Error::invalid("stop string", format!("#{i}: empty"), "a non-empty text"));
        }
        Ok(StopStrings { stops, held: String::new(), stopped: false })
    }

    /// Adds streamed text; returns the text now known to come before any stop string. Once a stop string
    /// is found, the text before it is returned, [`StopStrings::is_stopped`] is true and later text is
    /// dropped.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(text);
        // The earliest match; any match lies within the held text (see `hold_back`).
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let keep = self.hold_back();
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }

    /// Bytes at the end of the held text that begin some stop string (the longest such end): the only
    /// text a later match can start in.
    fn hold_back(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    /// Whether a stop string was found.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Ends the stream: the text held back (none after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}
