#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (default 30 s each, at most 60) and fails if any
# target finds a crash. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain
# RUSTC_BOOTSTRAP=1 enables the nightly flags cargo-fuzz passes. Usage: tools/fuzz-short.sh [SECONDS] [TARGET...]
# Crashes are written to fuzz/artifacts/TARGET/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s none TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-30}"
shift || true
if (( secs > 60 )); then
    secs=60
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz-short: cargo-fuzz is not installed (cargo install cargo-fuzz); skipping" >&2
    exit 0
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if (( ${#targets[@]} == 0 )); then
    mapfile -t targets < <(cargo fuzz list)
fi
# -s none: the crate is safe Rust (no sanitizer needed to see a panic), and it builds and runs much faster;
# -a: debug assertions, so arithmetic overflow panics as it does in tests.
flags=(-O -a -s none)
cargo fuzz build "${flags[@]}"
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== fuzz $t for ${secs}s"
    # Seeds in fuzz/seeds/TARGET are read but never written to; new inputs go to fuzz/corpus/TARGET.
    seeds=()
    if [[ -d "seeds/$t" ]]; then
        seeds=("seeds/$t")
    fi
    if ! cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -max_len=65536 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 | tail -n 25; then
        failed+=("$t")
    fi
done
if (( ${#failed[@]} > 0 )); then
    echo "fuzz-short: crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-short: ${#targets[@]} targets, ${secs}s each, no crashes"
