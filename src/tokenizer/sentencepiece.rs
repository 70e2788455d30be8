//! SentencePiece's `tokenizer.model` (a `ModelProto` protobuf), read into a llama [`Vocab`]: the pieces with
//! their scores and types, the trainer's special ids and the normalizer's options. Only what encodes the
//! way SentencePiece does is accepted: BPE models with the identity normalizer, `▁` for spaces, and extra
//! whitespace kept (Llama's and MobileLLM's tokenizer); anything else is an error naming the option.

use super::{SpacePrefix, TokenType, TokenizerKind, Vocab};
use crate::error::{Error, Result};

/// One field of a protobuf message: its number and value.
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

/// Reads the fields of one protobuf message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    what: &'static str,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], what: &'static str, path: &'a str) -> Self {
        Fields { buf, what, path }
    }

    fn truncated(&self) -> Error {
        Error::format(self.path, format!("truncated or malformed {}", self.what))
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or_else(|| self.truncated())?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.truncated())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(self.truncated());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field, or None at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| self.truncated())?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => return Err(self.truncated()),
        };
        Ok(Some((key >> 3, field)))
    }
}

/// A protobuf `int32` (negative values are 10-byte varints of the sign-extended value).
fn int32(v: u64) -> i64 {
    i64::from(v as u32 as i32)
}

fn text(bytes: &[u8], what: &str, path: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::format(path, format!("{what} is not UTF-8")))
}

/// The options of `TrainerSpec` and `NormalizerSpec` that change how text encodes.
struct Specs {
    model_type: u64,
    unk: i64,
    bos: i64,
    eos: i64,
    treat_whitespace_as_suffix: bool,
    normalizer: String,
    charsmap: usize,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Default for Specs {
    // SentencePiece's defaults for fields a file leaves out.
    fn default() -> Self {
        Specs {
            model_type: 1,
            unk: 0,
            bos: 1,
            eos: 2,
            treat_whitespace_as_suffix: false,
            normalizer: String::new(),
            charsmap: 0,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

fn read_trainer(buf: &[u8], specs: &mut Specs, path: &str) -> Result<()> {
    let mut f = Fields::new(buf, "trainer_spec", path);
    while let Some((number, field)) = f.next_field()? {
        if let Field::Varint(v) = field {
            match number {
                3 => specs.model_type = v,
                24 => specs.treat_whitespace_as_suffix = v != 0,
                40 => specs.unk = int32(v),
                41 => specs.bos = int32(v),
                42 => specs.eos = int32(v),
                _ => {}
            }
        }
    }
    Ok(())
}

fn read_normalizer(buf: &[u8], specs: &mut Specs, path: &str) -> Result<()> {
    let mut f = Fields::new(buf, "normalizer_spec", path);
    while let Some((number, field)) = f.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => specs.normalizer = text(b, "normalizer_spec.name", path)?,
            (2, Field::Bytes(b)) => specs.charsmap = b.len(),
            (3, Field::Varint(v)) => specs.add_dummy_prefix = v != 0,
            (4, Field::Varint(v)) => specs.remove_extra_whitespaces = v != 0,
            (5, Field::Varint(v)) => specs.escape_whitespaces = v != 0,
            _ => {}
        }
    }
    Ok(())
}

/// `(piece, score, type)` of one `SentencePiece` message (type defaults to NORMAL).
fn read_piece(buf: &[u8], path: &str) -> Result<(String, f32, TokenType)> {
    let (mut piece, mut score, mut ty) = (String::new(), 0.0, TokenType::Normal);
    let mut f = Fields::new(buf, "piece", path);
    while let Some((number, field)) = f.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => piece = text(b, "a piece", path)?,
            (2, Field::Fixed32(bits)) => score = f32::from_bits(bits),
            (3, Field::Varint(v)) => ty = TokenType::from_i64(v as i64),
            _ => {}
        }
    }
    Ok((piece, score, ty))
}

/// Reads a SentencePiece `tokenizer.model` (`path` names it in errors).
pub(crate) fn vocab_from_model(bytes: &[u8], path: &str) -> Result<Vocab> {
    let (mut tokens, mut scores, mut token_types) = (Vec::new(), Vec::new(), Vec::new());
    let mut specs = Specs::default();
    let mut f = Fields::new(bytes, "ModelProto", path);
    while let Some((number, field)) = f.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                let (piece, score, ty) = read_piece(b, path)?;
                tokens.push(piece);
                scores.push(score);
                token_types.push(ty);
            }
            (2, Field::Bytes(b)) => read_trainer(b, &mut specs, path)?,
            (3, Field::Bytes(b)) => read_normalizer(b, &mut specs, path)?,
            _ => {}
        }
    }
    if tokens.is_empty() {
        return Err(Error::format(path, "no pieces (not a SentencePiece model?)"));
    }
    let model_types = ["", "UNIGRAM", "BPE", "WORD", "CHAR"];
    if specs.model_type != 2 {
        let name = model_types.get(specs.model_type as usize).copied().unwrap_or("unknown");
        return Err(Error::invalid(
            "SentencePiece trainer_spec.model_type",
            format!("{} ({name})", specs.model_type),
            "2 (BPE)",
        ));
    }
    let unsupported = |what: &str, value: String, expected: &str| {
        Err(Error::invalid(format!("SentencePiece {what}"), value, expected))
    };
    if specs.charsmap > 0 {
        let name = format!("{:?} ({} bytes of character map)", specs.normalizer, specs.charsmap);
        return unsupported("normalizer_spec", name, "the identity normalizer (no character map)");
    }
    if specs.remove_extra_whitespaces {
        return unsupported("normalizer_spec.remove_extra_whitespaces", "true".into(), "false");
    }
    if !specs.escape_whitespaces {
        return unsupported("normalizer_spec.escape_whitespaces", "false".into(), "true");
    }
    if specs.treat_whitespace_as_suffix {
        return unsupported("trainer_spec.treat_whitespace_as_suffix", "true".into(), "false");
    }
    let id = |v: i64| u32::try_from(v).ok().filter(|&id| (id as usize) < tokens.len());
    let unk = id(specs.unk);
    Ok(Vocab {
        kind: TokenizerKind::Llama,
        pre: None,
        bos: id(specs.bos),
        eos: id(specs.eos),
        unk,
        token_types,
        scores,
        tokens,
        merges: Vec::new(),
        // What transformers' LlamaTokenizer does by default; tokenizer_config.json may say otherwise.
        add_bos: true,
        add_eos: false,
        space_prefix: if specs.add_dummy_prefix { SpacePrefix::EverySegment } else { SpacePrefix::Never },
        isolate_user_defined: true,
        ignore_merges: false,
        chat_template: None,
        added_token_flags: Default::default(),
    })
}
