// The per-step uniform (`#include step`), written before every submission; mirrors `ops::StepParams`
// field for field, so a planned dispatch never changes between decode steps.
struct Step {
    pos: u32,
    n: u32,
    seed: u32,
    top_k: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    penalty_count: u32,
    // Factors for a penalised logit > 0 (x) and <= 0 (y).
    penalty_scale: vec2<f32>,
    // Nonzero: sampling only picks tokens whose bit is set in the sampler's mask.
    mask: u32,
    // Nonzero: the sampler also writes the pick's log-probability (raw logits, temperature 1) to token[1].
    logprob: u32,
    // The sampler also writes this many best candidates, (id, log-probability bits), from token[2] on.
    top_logprobs: u32,
    _reserved0: u32,
    _reserved1: u32,
    _reserved2: u32,
    // Penalised tokens sorted by id, two per element: (id, offset bits, id, offset bits).
    penalties: array<vec4<u32>, 32>,
}
