//! The agent's copy of the VM's screen, and its conversion to I420 for the video encoders.
//!
//! Pixels are kept as 32-bit BGRA (the pixel format the agent asks the VNC server for).
//! Every write is checked against the framebuffer's bounds: a rectangle from the server
//! that does not fit is an error, never an out-of-bounds write.

use loco_shared::geom::TileMap;
use loco_shared::Rect;
use yuvutils_rs::{BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix};

pub const BYTES_PER_PIXEL: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramebufferError {
    #[error("rectangle {0:?} lies outside the {1}x{2} framebuffer")]
    OutOfBounds(Rect, u32, u32),
    #[error("rectangle {rect:?} needs {expected} bytes of pixels, got {got}")]
    WrongLength { rect: Rect, expected: usize, got: usize },
    #[error("framebuffer size {0}x{1} is not supported")]
    BadSize(u32, u32),
}

/// The largest desktop the agent accepts (matches vnc-rs' own limit).
pub const MAX_PIXELS: u64 = 8_294_400;

/// The screen as BGRA pixels.
#[derive(Debug, Clone, Default)]
pub struct Framebuffer {
    width: u32,
    height: u32,
    bgra: Vec<u8>,
}

impl Framebuffer {
    pub fn new(width: u32, height: u32) -> Result<Self, FramebufferError> {
        let mut fb = Self::default();
        fb.resize(width, height)?;
        Ok(fb)
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn bgra(&self) -> &[u8] {
        &self.bgra
    }

    pub fn full_rect(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Resizes to `width` × `height`, clearing the screen to black.
    pub fn resize(&mut self, width: u32, height: u32) -> Result<(), FramebufferError> {
        if width == 0 || height == 0 || u64::from(width) * u64::from(height) > MAX_PIXELS {
            return Err(FramebufferError::BadSize(width, height));
        }
        self.width = width;
        self.height = height;
        self.bgra.clear();
        self.bgra.resize(width as usize * height as usize * BYTES_PER_PIXEL, 0);
        Ok(())
    }

    fn check(&self, rect: Rect) -> Result<(), FramebufferError> {
        if rect.fits_in(self.width, self.height) {
            Ok(())
        } else {
            Err(FramebufferError::OutOfBounds(rect, self.width, self.height))
        }
    }

    /// Writes tightly packed BGRA pixels into `rect`.
    pub fn put(&mut self, rect: Rect, pixels: &[u8]) -> Result<(), FramebufferError> {
        self.check(rect)?;
        let row_bytes = rect.width as usize * BYTES_PER_PIXEL;
        let expected = row_bytes * rect.height as usize;
        if pixels.len() != expected {
            return Err(FramebufferError::WrongLength { rect, expected, got: pixels.len() });
        }
        if row_bytes == 0 {
            return Ok(());
        }
        let stride = self.width as usize * BYTES_PER_PIXEL;
        for (row, src) in pixels.chunks_exact(row_bytes).enumerate() {
            let start = (rect.y as usize + row) * stride + rect.x as usize * BYTES_PER_PIXEL;
            self.bgra[start..start + row_bytes].copy_from_slice(src);
        }
        Ok(())
    }

    /// Like [`put`](Self::put), but takes the pixels by value: a rectangle covering the whole
    /// screen replaces the buffer instead of copying 3 MiB (what a full-screen Raw update is).
    pub fn put_owned(&mut self, rect: Rect, pixels: Vec<u8>) -> Result<(), FramebufferError> {
        if rect == self.full_rect() && pixels.len() == self.bgra.len() {
            self.bgra = pixels;
            return Ok(());
        }
        self.put(rect, &pixels)
    }

    /// Copies the pixels of `src` (same size as `dst`) to `dst`; the two may overlap.
    pub fn copy(&mut self, dst: Rect, src_x: u32, src_y: u32) -> Result<(), FramebufferError> {
        let src = Rect::new(src_x, src_y, dst.width, dst.height);
        self.check(dst)?;
        self.check(src)?;
        let stride = self.width as usize * BYTES_PER_PIXEL;
        let row_bytes = dst.width as usize * BYTES_PER_PIXEL;
        let rows: Box<dyn Iterator<Item = usize>> =
            if dst.y > src.y { Box::new((0..dst.height as usize).rev()) } else { Box::new(0..dst.height as usize) };
        for row in rows {
            let s = (src.y as usize + row) * stride + src.x as usize * BYTES_PER_PIXEL;
            let d = (dst.y as usize + row) * stride + dst.x as usize * BYTES_PER_PIXEL;
            self.bgra.copy_within(s..s + row_bytes, d);
        }
        Ok(())
    }
}

/// An I420 picture with even dimensions (the framebuffer's, rounded up).
#[derive(Debug, Clone, Default)]
pub struct I420 {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl I420 {
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (even(width) as usize, even(height) as usize);
        Self { width: w as u32, height: h as u32, y: vec![16; w * h], u: vec![128; w * h / 4], v: vec![128; w * h / 4] }
    }

    pub fn y_stride(&self) -> usize {
        self.width as usize
    }

    pub fn chroma_stride(&self) -> usize {
        self.width as usize / 2
    }

    /// Converts the pixels of `fb` inside `damage` (grown to even edges for 4:2:0) into this
    /// picture, BT.601 limited range: what browsers assume for VP8 and what the H.264 stream
    /// signals. The picture must have been created for `fb`'s size.
    pub fn convert_from(&mut self, fb: &Framebuffer, damage: Rect) -> Result<(), FramebufferError> {
        if even(fb.width()) != self.width || even(fb.height()) != self.height {
            return Err(FramebufferError::BadSize(fb.width(), fb.height()));
        }
        let area = damage.aligned_to_chroma(self.width, self.height);
        if area.is_empty() {
            return Ok(());
        }
        let (x0, y0, y1) = (area.x as usize, area.y as usize, area.bottom() as usize);
        let (w, fb_w, fb_h) = (area.width as usize, fb.width() as usize, fb.height() as usize);
        let src_stride = fb_w * BYTES_PER_PIXEL;
        if area.right() <= fb_w as u64 && y1 <= fb_h {
            let src = &fb.bgra()[y0 * src_stride + x0 * BYTES_PER_PIXEL..];
            self.convert_area(src, src_stride, area)
        } else {
            // Past an odd width or height: pad a copy of the area by repeating the edge pixels.
            let row_bytes = w * BYTES_PER_PIXEL;
            let mut padded = vec![0u8; row_bytes * (y1 - y0)];
            for (i, row) in (y0..y1).enumerate() {
                let src_row = &fb.bgra()[row.min(fb_h - 1) * src_stride..][..src_stride];
                let dst = &mut padded[i * row_bytes..(i + 1) * row_bytes];
                for (j, px) in dst.chunks_exact_mut(BYTES_PER_PIXEL).enumerate() {
                    let at = (x0 + j).min(fb_w - 1) * BYTES_PER_PIXEL;
                    px.copy_from_slice(&src_row[at..at + BYTES_PER_PIXEL]);
                }
            }
            self.convert_area(&padded, row_bytes, area)
        }
    }

    /// Converts the marked tiles of `tiles` (made for `fb`'s size), run by run: what changed,
    /// not the box around it.
    pub fn convert_tiles(&mut self, fb: &Framebuffer, tiles: &TileMap) -> Result<(), FramebufferError> {
        if (tiles.width(), tiles.height()) != (fb.width(), fb.height()) {
            return Err(FramebufferError::BadSize(tiles.width(), tiles.height()));
        }
        for span in tiles.spans() {
            self.convert_from(fb, span)?;
        }
        Ok(())
    }

    /// `src` starts at the area's top-left pixel (and runs on to the end of its buffer);
    /// `area` has even edges inside the picture.
    fn convert_area(&mut self, src: &[u8], src_stride: usize, area: Rect) -> Result<(), FramebufferError> {
        let stride = self.width as usize;
        let (x, y, w, h) = (area.x as usize, area.y as usize, area.width as usize, area.height as usize);
        // yuvutils walks whole strides (`chunks_exact`) and leaves out a last row shorter than
        // its stride: the slices must hold `h` full strides. Only an area in the bottom rows
        // that does not start at the left edge has none after it; it goes through a compact
        // copy.
        let row_bytes = w * BYTES_PER_PIXEL;
        if (x == 0 || y + h < self.height as usize) && src.len() >= h * src_stride {
            let (luma, chroma) = (y * stride + x, y / 2 * (stride / 2) + x / 2);
            let (y_len, c_len) = (h * stride, h / 2 * (stride / 2));
            return convert_planes(
                &mut self.y[luma..luma + y_len],
                &mut self.u[chroma..chroma + c_len],
                &mut self.v[chroma..chroma + c_len],
                stride,
                &src[..h * src_stride],
                src_stride,
                (w, h),
            )
            .map_err(|_| FramebufferError::BadSize(self.width, self.height));
        }
        let compact: Vec<u8> =
            (0..h).flat_map(|row| &src[row * src_stride..row * src_stride + row_bytes]).copied().collect();
        let (mut py, mut pu, mut pv) = (vec![0u8; w * h], vec![0u8; w * h / 4], vec![0u8; w * h / 4]);
        convert_planes(&mut py, &mut pu, &mut pv, w, &compact, row_bytes, (w, h))
            .map_err(|_| FramebufferError::BadSize(self.width, self.height))?;
        for row in 0..h {
            self.y[(y + row) * stride + x..][..w].copy_from_slice(&py[row * w..][..w]);
        }
        let cstride = stride / 2;
        for row in 0..h / 2 {
            let at = (y / 2 + row) * cstride + x / 2;
            self.u[at..at + w / 2].copy_from_slice(&pu[row * w / 2..][..w / 2]);
            self.v[at..at + w / 2].copy_from_slice(&pv[row * w / 2..][..w / 2]);
        }
        Ok(())
    }
}

/// BGRA to I420 for a `size.0` × `size.1` area (even): every slice holds whole strides.
fn convert_planes(
    y: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
    stride: usize,
    src: &[u8],
    src_stride: usize,
    size: (usize, usize),
) -> Result<(), yuvutils_rs::YuvError> {
    let mut planar = YuvPlanarImageMut {
        y_plane: BufferStoreMut::Borrowed(y),
        y_stride: stride as u32,
        u_plane: BufferStoreMut::Borrowed(u),
        u_stride: (stride / 2) as u32,
        v_plane: BufferStoreMut::Borrowed(v),
        v_stride: (stride / 2) as u32,
        width: size.0 as u32,
        height: size.1 as u32,
    };
    yuvutils_rs::bgra_to_yuv420(
        &mut planar,
        src,
        src_stride as u32,
        YuvRange::Limited,
        YuvStandardMatrix::Bt601,
        YuvConversionMode::Balanced,
    )
}

fn even(v: u32) -> u32 {
    (v + 1) & !1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, bgra: [u8; 4]) -> Vec<u8> {
        bgra.iter().copied().cycle().take((w * h * 4) as usize).collect()
    }

    #[test]
    fn put_and_copy_stay_in_bounds() {
        let mut fb = Framebuffer::new(8, 4).unwrap();
        fb.put(Rect::new(6, 2, 2, 2), &solid(2, 2, [1, 2, 3, 255])).unwrap();
        assert_eq!(&fb.bgra()[(2 * 8 + 6) * 4..(2 * 8 + 6) * 4 + 4], &[1, 2, 3, 255]);
        assert!(matches!(fb.put(Rect::new(7, 2, 2, 2), &solid(2, 2, [0; 4])), Err(FramebufferError::OutOfBounds(..))));
        assert!(matches!(fb.put(Rect::new(0, 0, 2, 2), &[0; 3]), Err(FramebufferError::WrongLength { .. })));
        // Overlapping copy one pixel down-right.
        fb.put(Rect::new(0, 0, 2, 2), &solid(2, 2, [9, 9, 9, 9])).unwrap();
        fb.copy(Rect::new(1, 1, 2, 2), 0, 0).unwrap();
        let px = |x: usize, y: usize| fb.bgra()[(y * 8 + x) * 4];
        assert_eq!((px(1, 1), px(2, 2), px(2, 1)), (9, 9, 9));
        assert!(fb.copy(Rect::new(0, 0, 2, 2), 7, 3).is_err());
        assert!(fb.copy(Rect::new(u32::MAX, 0, 2, 2), 0, 0).is_err());
    }

    #[test]
    fn full_screen_put_takes_the_buffer() {
        let mut fb = Framebuffer::new(4, 2).unwrap();
        fb.put_owned(fb.full_rect(), solid(4, 2, [7, 7, 7, 255])).unwrap();
        assert!(fb.bgra().chunks(4).all(|p| p == [7, 7, 7, 255]));
        assert!(fb.put_owned(fb.full_rect(), vec![0; 5]).is_err());
        fb.put_owned(Rect::new(1, 1, 1, 1), vec![1, 2, 3, 4]).unwrap();
        assert_eq!(&fb.bgra()[(4 + 1) * 4..(4 + 1) * 4 + 4], &[1, 2, 3, 4]);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(Framebuffer::new(0, 10).is_err());
        assert!(Framebuffer::new(10_000, 10_000).is_err());
    }

    #[test]
    fn converts_known_colours_bt601_limited() {
        let mut fb = Framebuffer::new(16, 8).unwrap();
        fb.put(fb.full_rect(), &solid(16, 8, [255, 255, 255, 255])).unwrap();
        let mut pic = I420::new(16, 8);
        pic.convert_from(&fb, fb.full_rect()).unwrap();
        assert!(pic.y.iter().all(|&v| (234..=236).contains(&v)), "white Y = {:?}", &pic.y[..4]);
        // Pure red (B=0, G=0, R=255) on the top-left 2x2 only: V high, U low there.
        fb.put(Rect::new(0, 0, 2, 2), &solid(2, 2, [0, 0, 255, 255])).unwrap();
        pic.convert_from(&fb, Rect::new(0, 0, 1, 1)).unwrap();
        assert!((80..=83).contains(&pic.y[0]), "red Y = {}", pic.y[0]);
        assert!(pic.v[0] > 230 && pic.u[0] < 100, "red U,V = {},{}", pic.u[0], pic.v[0]);
        // Rows outside the damage band were left alone.
        assert!((234..=236).contains(&pic.y[16 * 4]));
    }

    #[test]
    fn odd_sizes_are_padded() {
        let mut fb = Framebuffer::new(5, 3).unwrap();
        fb.put(fb.full_rect(), &solid(5, 3, [0, 0, 0, 255])).unwrap();
        let mut pic = I420::new(5, 3);
        assert_eq!((pic.width, pic.height), (6, 4));
        pic.convert_from(&fb, fb.full_rect()).unwrap();
        assert!(pic.y.iter().all(|&v| v == 16));
    }

    fn noise(w: u32, h: u32, seed: u32) -> Vec<u8> {
        (0..w * h * 4).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
    }

    #[test]
    fn converting_the_changed_tiles_gives_the_full_conversion() {
        // Odd sizes, spans of every width the SIMD loops and their tails see, both edges.
        for (w, h) in [(1024, 768), (101, 37), (33, 17), (48, 16)] {
            let mut fb = Framebuffer::new(w, h).unwrap();
            fb.put(fb.full_rect(), &noise(w, h, 1)).unwrap();
            let mut pic = I420::new(w, h);
            pic.convert_from(&fb, fb.full_rect()).unwrap();
            for (i, r) in [(0, 0, 1, 1), (17, 3, 40, 2), (w - 1, h - 1, 1, 1), (w / 2, 0, 5, h), (0, h / 2, w, 1)]
                .into_iter()
                .enumerate()
            {
                let r = Rect::new(r.0, r.1, r.2, r.3).clipped_to(w, h);
                fb.put(r, &noise(r.width, r.height, 7 + i as u32)).unwrap();
                let mut tiles = TileMap::new(w, h);
                tiles.mark(r);
                let before = pic.clone();
                pic.convert_tiles(&fb, &tiles).unwrap();
                let mut full = I420::new(w, h);
                full.convert_from(&fb, fb.full_rect()).unwrap();
                assert!(pic.y == full.y && pic.u == full.u && pic.v == full.v, "{w}x{h}, {r:?}");
                // Rows and columns outside the tiles were not touched.
                let stride = pic.width as usize;
                for (at, (a, b)) in before.y.iter().zip(&pic.y).enumerate() {
                    let (x, y) = ((at % stride) as u32, (at / stride) as u32);
                    let inside = (x / 16, y / 16) >= (r.x / 16, r.y / 16)
                        && x / 16 <= (r.right() as u32 - 1) / 16
                        && y / 16 <= (r.bottom() as u32 - 1) / 16;
                    assert!(inside || a == b, "{w}x{h}: pixel ({x}, {y}) outside {r:?} changed");
                }
            }
            let mut wrong = TileMap::new(w + 1, h);
            wrong.mark_all();
            assert!(pic.convert_tiles(&fb, &wrong).is_err());
        }
    }
}
