#!/usr/bin/env bash
# The benchmarks on a lent GPU machine (the `device` tool: no Rust toolchain or Vulkan loader assumed there).
#
#   tools/device-bench.sh prepare   # here: release binaries into .devbin/, Vulkan/EGL loader packages into .gl/
#   tools/device-bench.sh run [--quick]   # there (carry .devbin and .gl): the kernel and end-to-end
#                                         # benchmarks; JSON, Markdown, SVG and logs into $OUT
#                                         # (default target/device)
#
# `run` works on any machine with a Vulkan driver, lavapipe included, so the script is checked here first.
# Both folders are git-ignored through .git/info/exclude; .devbin is ~20 MiB, .gl ~1 MiB (the carry limit
# is 64 MiB, so the 94 MiB SmolLM2 file stays behind: the synthetic 125M and 350M shapes run instead).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { echo "device-bench: $*" >&2; }

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
    # Kernels first: the end-to-end run then finds kernels.json and draws kernels.svg beside its own chart.
    # At most 8 files come back from the device: the 350M run keeps only its log (the table is in it).
    MOBILELLM_BENCH_DIR="$out" "$bin/kernels" --bench "$@" 2>&1 | tee "$out/kernels.log"
    "$bin/mobilellm" bench --synthetic 125m "$@" --out "$out" 2>&1 | tee "$out/decode.log"
    "$bin/mobilellm" bench --synthetic 350m --layer-sharing off "$@" --out /tmp/device-bench-350m 2>&1 |
        tee -a "$out/decode.log"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) say "usage: tools/device-bench.sh prepare|run"; exit 2 ;;
esac
