#!/usr/bin/env bash
# Builds the WebXR client page into www/dist/ without trunk: cargo (wasm32) → wasm-bindgen →
# index.html (and check.html) with a module script. `trunk serve` in www/ does the same for local work.
#
#   scripts/build-web.sh            size-optimised build (profile wasm-release)
#   LOCO_WEB_PROFILE=dev scripts/build-web.sh   quick debug build
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LOCO_CACHE=${LOCO_CACHE:-$HOME/.cache/loco}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$LOCO_CACHE/target}
PROFILE=${LOCO_WEB_PROFILE:-wasm-release}
OUT=${LOCO_WEB_OUT:-$ROOT/www/dist}

want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$ROOT/Cargo.lock")
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}') || true
if [ "$have" != "$want" ]; then
  echo "build-web: wasm-bindgen-cli $want is needed (found: ${have:-none}); run ./loco deps" >&2
  exit 1
fi

cd "$ROOT"
cargo build -p loco-client --target wasm32-unknown-unknown --profile "$PROFILE"
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
WASM=$CARGO_TARGET_DIR/wasm32-unknown-unknown/$dir/loco_client.wasm

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
wasm-bindgen --target web --no-typescript --out-dir "$OUT.tmp" "$WASM"
# The trunk link becomes the module that loads the wasm (its start function runs the page);
# check.html (the headset check) is index.html with www/check.fragment.html's title, style and
# report section put in (one page to keep, not two copies).
python3 - "$ROOT/www/index.html" "$ROOT/www/check.fragment.html" "$OUT.tmp" <<'PY'
import re, sys
src, frag_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
html = open(src, encoding="utf-8").read()
html, n = re.subn(r'\s*<!-- trunk builds.*?-->\n', '\n', html, flags=re.S)
html, n = re.subn(r'<link data-trunk rel="rust"[^>]*>',
                  '<script type="module">import init from "./loco_client.js"; init();</script>', html)
if n != 1:
    sys.exit(f"build-web: {src} has no trunk rust link to replace")
open(f"{out}/index.html", "w", encoding="utf-8").write(html)
frag = open(frag_path, encoding="utf-8").read()
title = re.search(r"<title>.*?</title>", frag).group(0)
style = re.search(r"<style>\n(.*?)</style>", frag, re.S).group(1)
section = frag[frag.index("<section"):]
check, n1 = re.subn(r"<title>.*?</title>", title, html, count=1)
check, n2 = re.subn(r"(\n  </style>)", "\n" + style.rstrip("\n") + r"\1", check, count=1)
check, n3 = re.subn(r'(  <div id="loco-videos")', "  " + section.strip() + "\n" + r"\1", check, count=1)
if (n1, n2, n3) != (1, 1, 1):
    sys.exit(f"build-web: index.html lacks a <title>, a </style> or #loco-videos for check.html ({n1}, {n2}, {n3})")
open(f"{out}/check.html", "w", encoding="utf-8").write(check)
PY
cp "$ROOT/www/desktops.example.json" "$OUT.tmp/"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
touch "$OUT/.ready"
raw=$(stat -c %s "$OUT/loco_client_bg.wasm")
gz=$(gzip -9 -c "$OUT/loco_client_bg.wasm" | wc -c)
echo "build-web: $OUT (wasm $((raw / 1024)) KiB, gzipped $((gz / 1024)) KiB, profile $PROFILE)" >&2
