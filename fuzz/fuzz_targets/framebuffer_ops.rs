//! The agent's framebuffer-apply code (`framebuffer::Framebuffer`, what the VNC task writes
//! Raw, CopyRect and DesktopSize updates with) and the encoder's incremental I420 conversion,
//! against a naive model, with arbitrary rectangles (overflowing, empty, outside), pixel
//! buffers of the wrong length, overlapping copies and resizes.
//!
//! Checked after every operation: the result (Ok, or which error) is what the model
//! predicts, and the pixels equal the model's. The encoder converts only what its damage
//! touches: converting the accumulated damage (its bounding box, or the 16×16 tiles it
//! touches, as `pipeline.rs` does) must give exactly the picture a full conversion of the
//! screen gives. `Framebuffer::new` refuses
//! exactly the sizes it documents.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use loco_agent::framebuffer::{Framebuffer, FramebufferError, BYTES_PER_PIXEL, I420, MAX_PIXELS};
use loco_shared::geom::{Damage, TileMap};
use loco_shared::Rect;

/// A coordinate or length: mostly small, sometimes anything (overflow, far outside).
#[derive(Debug, Arbitrary, Clone, Copy)]
enum N {
    Small(u8),
    Any(u32),
}

impl N {
    fn get(self) -> u32 {
        match self {
            N::Small(v) => u32::from(v),
            N::Any(v) => v,
        }
    }
}

#[derive(Debug, Arbitrary, Clone, Copy)]
struct R {
    x: N,
    y: N,
    w: N,
    h: N,
}

impl R {
    fn rect(self) -> Rect {
        Rect::new(self.x.get(), self.y.get(), self.w.get(), self.h.get())
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// DesktopSize: a new size (clears to black).
    Resize { w: u8, h: u8 },
    /// A Raw rectangle; `len_delta` makes the pixel buffer too long or short.
    Put { rect: R, seed: u8, len_delta: i8 },
    /// The same through `put_owned` (the full-screen fast path).
    PutOwned { rect: R, seed: u8, len_delta: i8 },
    /// A CopyRect.
    Copy { dst: R, src_x: N, src_y: N },
    /// The encoder takes the damage so far (plus some extra) and converts it.
    Convert { extra: R },
    /// The encoder converts the 16×16 tiles the damage so far touched.
    ConvertTiles,
    /// Compare the incremental picture with a full conversion.
    Check,
    /// `Framebuffer::new` with any size.
    New { w: u32, h: u32 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    w: u8,
    h: u8,
    ops: Vec<Op>,
}

struct Model {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Model {
    fn fits(&self, r: Rect) -> bool {
        u64::from(r.x) + u64::from(r.width) <= u64::from(self.w)
            && u64::from(r.y) + u64::from(r.height) <= u64::from(self.h)
    }

    fn at(&self, x: u32, y: u32) -> usize {
        (y as usize * self.w as usize + x as usize) * BYTES_PER_PIXEL
    }
}

fn pixels(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left(u32::from(seed & 7))).collect()
}

fn picture(fb: &Framebuffer) -> I420 {
    let mut pic = I420::new(fb.width(), fb.height());
    pic.convert_from(fb, fb.full_rect()).expect("full conversion");
    pic
}

fn same_picture(a: &I420, b: &I420) -> bool {
    (a.width, a.height) == (b.width, b.height) && a.y == b.y && a.u == b.u && a.v == b.v
}

fuzz_target!(|input: Input| {
    let (w, h) = (u32::from(input.w).max(1), u32::from(input.h).max(1));
    let mut fb = Framebuffer::new(w, h).expect("small sizes are fine");
    let mut model = Model { w, h, px: vec![0; (w * h) as usize * BYTES_PER_PIXEL] };
    let mut pic = picture(&fb);
    let mut damage = Damage::default();

    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Resize { w, h } => {
                let (w, h) = (u32::from(w), u32::from(h));
                let r = fb.resize(w, h);
                if w == 0 || h == 0 {
                    assert_eq!(r, Err(FramebufferError::BadSize(w, h)));
                } else {
                    assert_eq!(r, Ok(()));
                    model = Model { w, h, px: vec![0; (w * h) as usize * BYTES_PER_PIXEL] };
                    pic = picture(&fb);
                    damage = Damage::default();
                }
            }
            Op::Put { rect, seed, len_delta } | Op::PutOwned { rect, seed, len_delta } => {
                let owned = matches!(op, Op::PutOwned { .. });
                let r = rect.rect();
                let expected = u128::from(r.width) * u128::from(r.height) * BYTES_PER_PIXEL as u128;
                let fits = model.fits(r);
                if expected > 1 << 22 {
                    // Larger than any framebuffer here: refused on its bounds, whatever the buffer.
                    assert!(!fits);
                    assert!(matches!(fb.put(r, &[]), Err(FramebufferError::OutOfBounds(..))));
                    continue;
                }
                let len = (expected as i64 + i64::from(len_delta)).max(0) as usize;
                let data = pixels(seed, len);
                let result = if owned { fb.put_owned(r, data.clone()) } else { fb.put(r, &data) };
                match (fits, len as u128 == expected) {
                    (false, _) => {
                        assert!(matches!(result, Err(FramebufferError::OutOfBounds(..))), "{r:?}: {result:?}")
                    }
                    (true, false) => {
                        assert!(matches!(result, Err(FramebufferError::WrongLength { .. })), "{r:?}: {result:?}")
                    }
                    (true, true) => {
                        assert_eq!(result, Ok(()), "{r:?}");
                        let row = r.width as usize * BYTES_PER_PIXEL;
                        for y in 0..r.height {
                            let at = model.at(r.x, r.y + y);
                            model.px[at..at + row].copy_from_slice(&data[y as usize * row..(y as usize + 1) * row]);
                        }
                        damage.add(r);
                    }
                }
            }
            Op::Copy { dst, src_x, src_y } => {
                let d = dst.rect();
                let s = Rect::new(src_x.get(), src_y.get(), d.width, d.height);
                let result = fb.copy(d, s.x, s.y);
                if model.fits(d) && model.fits(s) {
                    assert_eq!(result, Ok(()), "{d:?} from {s:?}");
                    let row = d.width as usize * BYTES_PER_PIXEL;
                    let mut block = Vec::with_capacity(row * d.height as usize);
                    for y in 0..d.height {
                        let at = model.at(s.x, s.y + y);
                        block.extend_from_slice(&model.px[at..at + row]);
                    }
                    for y in 0..d.height {
                        let at = model.at(d.x, d.y + y);
                        model.px[at..at + row].copy_from_slice(&block[y as usize * row..(y as usize + 1) * row]);
                    }
                    damage.add(d);
                } else {
                    assert!(matches!(result, Err(FramebufferError::OutOfBounds(..))), "{d:?} from {s:?}: {result:?}");
                }
            }
            Op::Convert { extra } => {
                let mut band = damage.take().map(|d| d.bounds()).unwrap_or_default();
                band = band.union(&extra.rect());
                pic.convert_from(&fb, band).expect("converting any damage");
            }
            Op::ConvertTiles => {
                // As the pipeline does: only the tiles the damage touched.
                let mut tiles = TileMap::new(fb.width(), fb.height());
                if let Some(d) = damage.take() {
                    tiles.mark_damage(&d);
                }
                pic.convert_tiles(&fb, &tiles).expect("converting the damaged tiles");
            }
            Op::Check => {
                if let Some(d) = damage.take() {
                    pic.convert_from(&fb, d.bounds()).expect("converting the damage");
                }
                assert!(same_picture(&pic, &picture(&fb)), "incremental conversion differs from a full one");
                let mut wrong = I420::new(fb.width() + 2, fb.height());
                assert!(wrong.convert_from(&fb, fb.full_rect()).is_err(), "a picture of another size");
            }
            Op::New { w, h } => {
                let bad = w == 0 || h == 0 || u64::from(w) * u64::from(h) > MAX_PIXELS;
                if bad {
                    assert_eq!(Framebuffer::new(w, h).map(|_| ()), Err(FramebufferError::BadSize(w, h)));
                } else if u64::from(w) * u64::from(h) <= 1 << 16 {
                    let f = Framebuffer::new(w, h).expect("a valid size");
                    assert_eq!(f.bgra().len(), (w * h) as usize * BYTES_PER_PIXEL);
                    assert!(f.bgra().iter().all(|&b| b == 0));
                }
            }
        }
        assert_eq!((fb.width(), fb.height()), (model.w, model.h));
        assert!(fb.bgra() == model.px.as_slice(), "pixels differ from the model");
    }
});
