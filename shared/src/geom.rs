//! Rectangles in desktop pixels and the damage they add up to.

/// An axis-aligned rectangle in desktop pixels. `x`/`y` are the top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self { x, y, width, height }
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Exclusive right edge.
    pub fn right(&self) -> u64 {
        u64::from(self.x) + u64::from(self.width)
    }

    /// Exclusive bottom edge.
    pub fn bottom(&self) -> u64 {
        u64::from(self.y) + u64::from(self.height)
    }

    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The smallest rectangle holding both. An empty rectangle is the identity.
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        let right = self.right().max(other.right());
        let bottom = self.bottom().max(other.bottom());
        // A box wider than u32 can say is clamped to the widest one (never wrapped to a narrow one).
        let span = |far: u64, near: u32| (far - u64::from(near)).min(u64::from(u32::MAX)) as u32;
        Rect::new(x, y, span(right, x), span(bottom, y))
    }

    /// The part of `self` inside a `width` × `height` desktop (empty when none is).
    pub fn clipped_to(&self, width: u32, height: u32) -> Rect {
        if self.x >= width || self.y >= height {
            return Rect::default();
        }
        let right = self.right().min(u64::from(width));
        let bottom = self.bottom().min(u64::from(height));
        Rect::new(self.x, self.y, (right - u64::from(self.x)) as u32, (bottom - u64::from(self.y)) as u32)
    }

    /// Whether `self` lies entirely inside a `width` × `height` desktop.
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        self.right() <= u64::from(width) && self.bottom() <= u64::from(height)
    }

    /// The rectangle grown outwards so that all four edges are even, which 4:2:0 chroma
    /// subsampling needs, and clipped to the (even-sized) desktop.
    pub fn aligned_to_chroma(&self, width: u32, height: u32) -> Rect {
        if self.is_empty() {
            return *self;
        }
        let x = self.x & !1;
        let y = self.y & !1;
        // Clipped before narrowing to u32: rounding a rect reaching 2^32 up to even must not
        // wrap its width to 0 (found by the framebuffer_ops fuzz target).
        let right = ((self.right() + 1) & !1).min(u64::from(width));
        let bottom = ((self.bottom() + 1) & !1).min(u64::from(height));
        if u64::from(x) >= right || u64::from(y) >= bottom {
            return Rect::default();
        }
        Rect::new(x, y, (right - u64::from(x)) as u32, (bottom - u64::from(y)) as u32)
    }
}

/// Damage accumulated since the last frame was taken: a bounding box, which is what an encoder
/// that re-reads changed pixels needs (video encoders code whole frames anyway).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damage {
    bounds: Rect,
}

impl Damage {
    pub fn add(&mut self, rect: Rect) {
        self.bounds = self.bounds.union(&rect);
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// Takes the accumulated bounding box, leaving no damage behind.
    pub fn take(&mut self) -> Option<Rect> {
        let bounds = std::mem::take(&mut self.bounds);
        (!bounds.is_empty()).then_some(bounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_and_identity() {
        let a = Rect::new(10, 10, 10, 10);
        let b = Rect::new(0, 15, 5, 20);
        assert_eq!(a.union(&b), Rect::new(0, 10, 20, 25));
        assert_eq!(a.union(&Rect::default()), a);
        assert_eq!(Rect::default().union(&b), b);
    }

    #[test]
    fn clip_and_fit() {
        let r = Rect::new(1000, 700, 100, 100);
        assert_eq!(r.clipped_to(1024, 768), Rect::new(1000, 700, 24, 68));
        assert!(!r.fits_in(1024, 768));
        assert!(Rect::new(2000, 0, 1, 1).clipped_to(1024, 768).is_empty());
        assert!(Rect::new(u32::MAX, u32::MAX, u32::MAX, u32::MAX).clipped_to(10, 10).is_empty());
        assert!(!Rect::new(1, 1, u32::MAX, 1).fits_in(10, 10));
    }

    #[test]
    fn chroma_alignment() {
        assert_eq!(Rect::new(3, 5, 2, 2).aligned_to_chroma(1024, 768), Rect::new(2, 4, 4, 4));
        assert_eq!(Rect::new(1023, 767, 1, 1).aligned_to_chroma(1024, 768), Rect::new(1022, 766, 2, 2));
    }

    #[test]
    fn damage_accumulates_and_takes() {
        let mut d = Damage::default();
        assert!(d.take().is_none());
        d.add(Rect::new(0, 0, 1, 1));
        d.add(Rect::new(9, 9, 1, 1));
        assert_eq!(d.take(), Some(Rect::new(0, 0, 10, 10)));
        assert!(d.is_empty());
    }

    #[test]
    fn huge_rects_do_not_wrap() {
        let huge = Rect::new(0, 255, u32::MAX, 3_149_642_683);
        let damage = Rect::new(3, 2, 10, 5);
        let band = damage.union(&huge);
        assert_eq!(band, Rect::new(0, 2, u32::MAX, 3_149_642_936));
        // Rounded to even it reaches 2^32: still the whole 33x17 desktop from row 2, not nothing.
        assert_eq!(band.aligned_to_chroma(33, 17), Rect::new(0, 2, 33, 15));
        let far = Rect::new(u32::MAX, u32::MAX, u32::MAX, u32::MAX);
        assert_eq!(Rect::new(0, 0, 1, 1).union(&far), Rect::new(0, 0, u32::MAX, u32::MAX));
        assert_eq!(far.aligned_to_chroma(1024, 768), Rect::default());
    }
}
