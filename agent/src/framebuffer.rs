//! The agent's copy of the VM's screen, and its conversion to I420 for the video encoders.
//!
//! Pixels are kept as 32-bit BGRA (the pixel format the agent asks the VNC server for).
//! Every write is checked against the framebuffer's bounds: a rectangle from the server
//! that does not fit is an error, never an out-of-bounds write.

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

    /// Converts the rows of `fb` that `damage` touches (the full width) into this picture,
    /// BT.601 limited range: what browsers assume for VP8 and what the H.264 stream signals.
    /// The picture must have been created for `fb`'s size.
    pub fn convert_from(&mut self, fb: &Framebuffer, damage: Rect) -> Result<(), FramebufferError> {
        if even(fb.width()) != self.width || even(fb.height()) != self.height {
            return Err(FramebufferError::BadSize(fb.width(), fb.height()));
        }
        let band = damage.aligned_to_chroma(self.width, self.height);
        if band.is_empty() {
            return Ok(());
        }
        let (y0, y1) = (band.y as usize, band.bottom() as usize);
        let (w, fb_h) = (self.width as usize, fb.height() as usize);
        let src_stride = fb.width() as usize * BYTES_PER_PIXEL;
        // Rows of the framebuffer inside the band; an odd-height framebuffer repeats its
        // last row into the padding row.
        let fb_rows = y0..y1.min(fb_h);
        if fb.width() as usize == w && fb_rows.len() == y1 - y0 {
            let src = &fb.bgra()[y0 * src_stride..y1 * src_stride];
            self.convert_band(src, src_stride, y0, y1 - y0)
        } else {
            // Odd width or height: pad a copy of the band by repeating the edge pixels.
            let mut padded = vec![0u8; w * BYTES_PER_PIXEL * (y1 - y0)];
            for (i, row) in (y0..y1).enumerate() {
                let src_row = row.min(fb_h - 1);
                let src = &fb.bgra()[src_row * src_stride..(src_row + 1) * src_stride];
                let dst = &mut padded[i * w * BYTES_PER_PIXEL..(i + 1) * w * BYTES_PER_PIXEL];
                dst[..src.len()].copy_from_slice(src);
                if w * BYTES_PER_PIXEL > src.len() {
                    let last: [u8; 4] =
                        [src[src.len() - 4], src[src.len() - 3], src[src.len() - 2], src[src.len() - 1]];
                    for px in dst[src.len()..].chunks_exact_mut(4) {
                        px.copy_from_slice(&last);
                    }
                }
            }
            self.convert_band(&padded, w * BYTES_PER_PIXEL, y0, y1 - y0)
        }
    }

    fn convert_band(&mut self, src: &[u8], src_stride: usize, y0: usize, rows: usize) -> Result<(), FramebufferError> {
        let w = self.width as usize;
        let cw = w / 2;
        let mut planar = YuvPlanarImageMut {
            y_plane: BufferStoreMut::Borrowed(&mut self.y[y0 * w..(y0 + rows) * w]),
            y_stride: w as u32,
            u_plane: BufferStoreMut::Borrowed(&mut self.u[y0 / 2 * cw..(y0 + rows) / 2 * cw]),
            u_stride: cw as u32,
            v_plane: BufferStoreMut::Borrowed(&mut self.v[y0 / 2 * cw..(y0 + rows) / 2 * cw]),
            v_stride: cw as u32,
            width: w as u32,
            height: rows as u32,
        };
        yuvutils_rs::bgra_to_yuv420(
            &mut planar,
            src,
            src_stride as u32,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .map_err(|_| FramebufferError::BadSize(self.width, self.height))
    }
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
}
