// The per-step uniform (`#include step`), written before every submission; mirrors `ops::StepParams`
// field for field, so a planned dispatch never changes between decode steps.
struct Step {
    pos: u32,
    n: u32,
    seed: u32,
    top_k: u32,
    temperature: f32,
    top_p: f32,
    _pad0: u32,
    _pad1: u32,
}
