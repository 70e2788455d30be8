#!/usr/bin/env bash
# The benchmarks on a lent GPU machine (the `device` tool: no Rust toolchain or Vulkan loader assumed there).
#
#   tools/device-bench.sh prepare   # here: release binaries into .devbin/, Vulkan/EGL loader packages into .gl/
#   tools/device-bench.sh run [--quick]   # there (carry .devbin and .gl): the GPU-vs-CPU tests and the
#                                         # demo's check first, then the kernel and end-to-end benchmarks;
#                                         # JSON, Markdown, SVG and logs into $OUT (default target/device)
#
# `run` works on any machine with a Vulkan driver, lavapipe included, so the script is checked here first.
# Both folders are git-ignored through .git/info/exclude; .devbin is ~20 MiB, .gl ~1 MiB (the carry limit
# is 64 MiB, so the 94 MiB SmolLM2 file stays behind: the synthetic 125M and 350M shapes run instead).
# The GPU-facing test binaries travel stripped and xz-packed (~8 MiB for ~80 MiB), so a real GPU's subgroup
# size, f16 and driver compiler are checked against the CPU reference before any number is taken.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { echo "device-bench: $*" >&2; }

# The test targets that run kernels on the GPU (the others are CPU-only, naga-only or need the model file).
GPU_TESTS="${DEVICE_BENCH_TESTS:-gemv gemm attention ffn qkv_rope rms_norm sample embedding elementwise model device_errors bad_inputs}"

prepare() {
    for d in .devbin .gl; do
        grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
    done
    mkdir -p .devbin .gl
    cargo build --release --bin mobilellm
    cp target/release/mobilellm .devbin/
    local bench
    bench=$(cargo bench --bench kernels --no-run 2>&1 | grep -o 'target/release/deps/kernels-[0-9a-f]*' | head -1)
    [ -n "$bench" ] || { say "could not find the kernels bench binary"; exit 1; }
    cp "$bench" .devbin/kernels
    strip .devbin/mobilellm .devbin/kernels
    local tests=/tmp/device-bench-tests args=()
    rm -rf "$tests" && mkdir -p "$tests"
    for t in $GPU_TESTS; do args+=(--test "$t"); done
    cargo test --release --no-run "${args[@]}" --message-format=json |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' |
        while read -r name exe; do cp "$exe" "$tests/$name"; done
    strip "$tests"/*
    tar -C "$tests" -cJf .devbin/tests.txz .
    echo "$ROOT" > .devbin/built-in
    if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
        local lists=/tmp/device-bench-apt
        mkdir -p "$lists/partial"
        local o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
        # shellcheck disable=SC2086
        apt-get $o update >&2
        # shellcheck disable=SC2086
        (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >&2)
    fi
    say "ready: run 'tools/device-bench.sh run' on the device with carry [.devbin, .gl]"
}

run() {
    local out="${OUT:-$ROOT/target/device}"
    mkdir -p "$out"
    if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
        export VK_DRIVER_FILES="$icd"
        export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv >&2 || true
    local bin=.devbin
    [ -x "$bin/mobilellm" ] || { say "no $bin/mobilellm: run 'tools/device-bench.sh prepare' first"; exit 1; }
    checks "$@" 2>&1 | tee "$out/checks.log"
    # Kernels first: the end-to-end run then finds kernels.json and draws kernels.svg beside its own chart.
    # At most 8 files come back from the device: the 350M run keeps only its log (the table is in it).
    # Each step has its own time limit (DEVICE_BENCH_STEP_S, default 200 s), so one that hangs still
    # leaves the others their turn inside the lease.
    local limit="${DEVICE_BENCH_STEP_S:-200}"
    MOBILELLM_BENCH_DIR="$out" timeout "$limit" "$bin/kernels" --bench "$@" 2>&1 | tee "$out/kernels.log" ||
        say "kernels bench failed or timed out"
    timeout "$limit" "$bin/mobilellm" bench --synthetic 125m "$@" --out "$out" 2>&1 | tee "$out/decode.log" ||
        say "125M bench failed or timed out"
    # The GEMV mapping sweep (what `GemvMapping::choose` is tuned from), appended to the kernel log
    # (DEVICE_BENCH_SWEEP=0 skips it, for a lease with little time left).
    if [ "${DEVICE_BENCH_SWEEP:-1}" != 0 ]; then
        GEMV_SWEEP=1 MOBILELLM_BENCH_DIR=/tmp/device-bench-sweep timeout "$limit" "$bin/kernels" --bench "$@" 2>&1 |
            tee -a "$out/kernels.log" || say "GEMV sweep failed or timed out"
    fi
    timeout "$limit" "$bin/mobilellm" bench --synthetic 350m --layer-sharing off "$@" --out /tmp/device-bench-350m \
        2>&1 | tee -a "$out/decode.log" || say "350M bench failed or timed out"
}

# GPU vs CPU before any timing: every GPU test target (both feature sets; weights in buffers, then in
# textures for the products and the model), and the demo's synthetic 125M-LS check. A failure is reported
# and the benchmarks still run, so one call always brings numbers back.
checks() {
    local tests=/tmp/device-bench-tests
    rm -rf "$tests" && mkdir -p "$tests" && { tar -C "$tests" -xJf .devbin/tests.txz ||
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .devbin/tests.txz "$tests"; }
    # The test binaries find tests/data through the path they were built in.
    local built
    built=$(cat .devbin/built-in)
    if [ ! -e "$built" ]; then mkdir -p "$(dirname "$built")" && ln -s "$ROOT" "$built"; fi
    # ... and the CLI they start (tests/model.rs runs `mobilellm run`) where cargo put it.
    if [ ! -x "$ROOT/target/release/mobilellm" ]; then
        mkdir -p "$ROOT/target/release" && cp .devbin/mobilellm "$ROOT/target/release/mobilellm"
    fi
    # A budget for all the checks (DEVICE_BENCH_CHECK_S, default 240 s): a device lease is short, and the
    # benchmarks must still run after a hung test.
    local failed=0 deadline=$((SECONDS + ${DEVICE_BENCH_CHECK_S:-240}))
    left() { local s=$((deadline - SECONDS)); [ "$s" -gt 100 ] && s=100; echo "$s"; }
    # One test binary within what is left of the budget; further arguments are environment assignments.
    one() {
        local t=$1 label=$2
        shift 2
        [ "$(left)" -gt 5 ] || { say "check budget spent: skipping test $label"; failed=1; return; }
        say "test $label"
        env "$@" timeout "$(left)" "$tests/$t" -q 2>&1 | grep -E "^test result|FAILED|panicked|failed|test device" |
            sort -u || failed=1
    }
    for t in $GPU_TESTS; do one "$t" "$t"; done
    for t in gemv gemm model; do
        if [[ " $GPU_TESTS " == *" $t "* ]]; then one "$t" "$t (weights in textures)" MOBILELLM_WEIGHTS=texture; fi
    done
    say "demo check (synthetic 125M-LS vs the CPU reference)"
    local decode=128
    [ "${1:-}" = "--quick" ] && decode=16
    timeout $((deadline - SECONDS > 30 ? deadline - SECONDS : 30)) .devbin/mobilellm demo --synthetic-only --decode "$decode" || failed=1
    [ "$failed" = 0 ] && say "checks: all ran" || say "checks: a step failed or timed out (see above)"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) say "usage: tools/device-bench.sh prepare|run"; exit 2 ;;
esac
