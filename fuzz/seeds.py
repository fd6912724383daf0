#!/usr/bin/env python3
"""Writes the seed inputs of the two structured fuzz targets (layout_ray, bitrate_pacer) in
the byte layout of the `arbitrary` crate (1.x) that their `#[derive(Arbitrary)]` inputs are
decoded with: integers and floats little-endian, a `Vec` as elements each preceded by a byte
whose bit 0 says "one more", an enum as a u32 `v` picking variant `(v * count) >> 32`.
Check one with `cargo fuzz fmt --fuzz-dir fuzz TARGET fuzz/corpus/TARGET/NAME`.
The seeds of input_message and desktops_config are plain JSON files, written by hand."""
import struct
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def f32(*xs): return b"".join(struct.pack("<f", x) for x in xs)
def u8(x): return struct.pack("<B", x)
def u16(x): return struct.pack("<H", x)
def u32(x): return struct.pack("<I", x)
def vec(items): return b"".join(b"\x01" + i for i in items) + b"\x00"


def wall(radius=1.6, cw=0.92, ch=0.69, gap=0.06, cols=3, eye=(0.0, 1.5, 0.0), yaw=0.0,
         head=(0.0, 0.0, 0.0, 1.0), aspects=(1024 / 768,) * 9, ro=(0.0, 1.5, 0.0),
         rd=(0.0, 0.0, -1.0), u=0.5, v=0.5, w=1024, h=768) -> bytes:
    return (f32(radius, cw, ch, gap) + u8(cols) + f32(*eye, yaw, *head)
            + vec([f32(a) for a in aspects]) + f32(*ro, *rd, u, v) + u32(w) + u32(h))


# bitrate_pacer's Event variants, in declaration order
EVENTS = ["Damage", "KeyframeRequest", "Reset", "Poll", "Sleep", "PollWhenDue", "Report", "Input"]


def ev(name, *args) -> bytes:
    i = EVENTS.index(name)
    tag = u32(((i << 32) + len(EVENTS) - 1) // len(EVENTS))   # smallest v with (v*n)>>32 == i
    if name == "Report":
        return tag + u16(args[0]) + u8(args[1])
    return tag + b"".join(u16(a) for a in args)


def pacer(events, max_fps=30, refine=2, refine_ms=150, kf_ms=300, min_kbps=300, max_kbps=6000,
          per_sec=1000, burst=250) -> bytes:
    return (u16(max_fps) + u8(refine) + u16(refine_ms) + u16(kf_ms) + u32(min_kbps) + u32(max_kbps)
            + u16(per_sec) + u16(burst) + vec(events))


def main() -> None:
    lr = CORPUS / "layout_ray"
    lr.mkdir(parents=True, exist_ok=True)
    (lr / "default_wall").write_bytes(wall())
    (lr / "wide_desktops_yawed").write_bytes(
        wall(aspects=(16 / 9, 4 / 3, 1.0, 0.5), yaw=0.7, rd=(0.3, 0.1, -1.0), cols=2))
    nan, inf = float("nan"), float("inf")
    (lr / "nan_and_inf").write_bytes(
        wall(radius=nan, cw=inf, aspects=(nan, 0.0, -1.0), rd=(0.0, 0.0, 0.0), u=nan, v=inf, w=0, h=0))

    bp = CORPUS / "bitrate_pacer"
    bp.mkdir(parents=True, exist_ok=True)
    # A scrolling screen: damage every 5 ms, the encoder polling when told.
    motion = []
    for _ in range(60):
        motion += [ev("Damage", 5000), ev("Poll", 0), ev("PollWhenDue")]
    (bp / "motion").write_bytes(pacer(motion + [ev("Sleep", 400), ev("PollWhenDue"), ev("PollWhenDue")]))
    # A PLI storm while the screen changes, and a VNC reset.
    storm = []
    for _ in range(20):
        storm += [ev("KeyframeRequest", 10000), ev("Damage", 1000), ev("PollWhenDue"), ev("Poll", 20000)]
    storm += [ev("Reset"), ev("Sleep", 1000)]
    (bp / "keyframe_storm").write_bytes(pacer(storm, max_fps=10, refine=1))
    # Loss reports: heavy loss, a hold, then clean reports; input at 2 kHz.
    reports = ([ev("Report", 1000, 64)] * 4 + [ev("Report", 1000, 13)] + [ev("Report", 1000, 0)] * 8
               + [ev("Report", 300, 255)] * 10 + [ev("Input", 500)] * 300)
    (bp / "loss_reports_and_input").write_bytes(pacer(reports))


if __name__ == "__main__":
    main()
