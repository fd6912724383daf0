#!/usr/bin/env python3
"""Packs the built WebXR page (scripts/build-web.sh's www/dist) for loco-web.

    pack.py SRC DST

- The wasm and its JS glue get their content's hash in their names (loco_client.<16 hex>.js,
  loco_client_bg.<16 hex>.wasm), and the references to them (index.html and check.html → the JS, the JS → the
  wasm) are rewritten, so nginx can let browsers cache them for a year: a new build has new names.
- Every text or wasm file is stored precompressed beside itself, .br (brotli -q 11) and .gz (gzip -9),
  for nginx's brotli_static and gzip_static.
- desktops.example.json is left out: the deployment mounts its own desktops.json.
Fails, naming the file, when an expected file or reference is missing.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

COMPRESS = {".html", ".js", ".wasm", ".json", ".css", ".svg", ".txt"}


def die(msg: str) -> None:
    sys.exit(f"pack.py: {msg}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def main(src: Path, dst: Path) -> None:
    for f in ("index.html", "loco_client.js", "loco_client_bg.wasm"):
        if not (src / f).is_file():
            die(f"{src / f} is missing: build the page first (scripts/build-web.sh)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("desktops.example.json", ".ready"))

    wasm = (dst / "loco_client_bg.wasm").read_bytes()
    wasm_name = f"loco_client_bg.{digest(wasm)}.wasm"
    js = (dst / "loco_client.js").read_text(encoding="utf-8")
    if "'loco_client_bg.wasm'" not in js:
        die("loco_client.js does not load 'loco_client_bg.wasm' (wasm-bindgen's output changed?)")
    js = js.replace("'loco_client_bg.wasm'", f"'{wasm_name}'")
    js_name = f"loco_client.{digest(js.encode())}.js"
    pages = {}
    for page in ("index.html", "check.html"):
        if not (dst / page).is_file():
            if page == "index.html":
                die(f"{src / page} is missing")
            continue  # an older build without the check page
        html = (dst / page).read_text(encoding="utf-8")
        if '"./loco_client.js"' not in html:
            die(f'{page} does not import "./loco_client.js"')
        pages[page] = html.replace('"./loco_client.js"', f'"./{js_name}"')

    (dst / "loco_client_bg.wasm").rename(dst / wasm_name)
    (dst / "loco_client.js").unlink()
    (dst / js_name).write_text(js, encoding="utf-8")
    for page, html in pages.items():
        (dst / page).write_text(html, encoding="utf-8")

    brotli = shutil.which("brotli")
    if brotli is None:
        die("brotli is not installed (apt-get install brotli)")
    total = packed = 0
    for f in sorted(p for p in dst.rglob("*") if p.is_file() and p.suffix in COMPRESS):
        data = f.read_bytes()
        (f.parent / (f.name + ".gz")).write_bytes(gzip.compress(data, 9, mtime=0))
        subprocess.run([brotli, "-q", "11", "-f", "-o", str(f) + ".br", str(f)], check=True)
        total += len(data)
        packed += (f.parent / (f.name + ".br")).stat().st_size
    print(f"pack.py: {js_name}, {wasm_name}; {total // 1024} KiB of files, {packed // 1024} KiB as brotli")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        die("usage: pack.py SRC DST")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
