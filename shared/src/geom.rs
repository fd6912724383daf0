//! Rectangles in desktop pixels, the damage they add up to, and the tiles it touches.

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

/// Damage accumulated since the last frame was taken: the rectangles that changed, as the VNC
/// server reported them, and their bounding box. Past [`Damage::MAX_RECTS`] rectangles only
/// the bounding box is kept (it covers them all).
///
/// A desktop's changes are often far apart (a video and a clock, a cursor and a caret): the
/// encoder converts and codes only the [`TileMap`] tiles they touch, not the box around them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    rects: Vec<Rect>,
    bounds: Rect,
    /// More rectangles than [`Damage::MAX_RECTS`] were added: only `bounds` is known.
    coarse: bool,
}

impl Damage {
    /// The rectangles kept one by one; a full-motion VNC update of a 1024×768 video holds
    /// about a hundred small ones (TigerVNC), a few updates coalesce between two frames.
    pub const MAX_RECTS: usize = 1024;

    pub fn add(&mut self, rect: Rect) {
        if rect.is_empty() {
            return;
        }
        self.bounds = self.bounds.union(&rect);
        if self.coarse {
            return;
        }
        if self.rects.len() < Self::MAX_RECTS {
            self.rects.push(rect);
        } else {
            self.coarse = true;
            self.rects = Vec::new();
        }
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &Damage) {
        for r in other.rects() {
            self.add(*r);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The bounding box of everything added.
    pub fn bounds(&self) -> Rect {
        self.bounds
    }

    /// The rectangles added, or only their bounding box past [`Damage::MAX_RECTS`]: together
    /// they cover everything added (none when empty).
    pub fn rects(&self) -> &[Rect] {
        if self.coarse {
            std::slice::from_ref(&self.bounds)
        } else {
            &self.rects
        }
    }

    /// Takes the accumulated damage, leaving none behind.
    pub fn take(&mut self) -> Option<Damage> {
        let d = std::mem::take(self);
        (!d.is_empty()).then_some(d)
    }
}

/// The 16×16 tiles of a `width` × `height` picture that changed: the macroblock grid of H.264
/// and VP8, which is what the encoder converts ([`TileMap::spans`]) and what it may skip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TileMap {
    width: u32,
    height: u32,
    cols: usize,
    marked: Vec<bool>,
}

impl TileMap {
    pub const TILE: u32 = 16;

    /// No tile marked.
    pub fn new(width: u32, height: u32) -> Self {
        let cols = width.div_ceil(Self::TILE) as usize;
        let rows = height.div_ceil(Self::TILE) as usize;
        Self { width, height, cols, marked: vec![false; cols * rows] }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Tiles in a row (the last may be cut by the picture's edge).
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> usize {
        self.marked.len().checked_div(self.cols).unwrap_or(0)
    }

    /// One flag per tile, row by row.
    pub fn marked(&self) -> &[bool] {
        &self.marked
    }

    pub fn count(&self) -> usize {
        self.marked.iter().filter(|m| **m).count()
    }

    pub fn is_empty(&self) -> bool {
        !self.marked.contains(&true)
    }

    pub fn clear(&mut self) {
        self.marked.fill(false);
    }

    pub fn mark_all(&mut self) {
        self.marked.fill(true);
    }

    /// Marks every tile `rect` touches (the part of it inside the picture).
    pub fn mark(&mut self, rect: Rect) {
        let r = rect.clipped_to(self.width, self.height);
        if r.is_empty() {
            return;
        }
        let (c0, r0) = ((r.x / Self::TILE) as usize, (r.y / Self::TILE) as usize);
        let c1 = (r.right().div_ceil(u64::from(Self::TILE)) as usize).min(self.cols);
        let r1 = (r.bottom().div_ceil(u64::from(Self::TILE)) as usize).min(self.rows());
        for row in r0..r1 {
            self.marked[row * self.cols + c0..row * self.cols + c1].fill(true);
        }
    }

    pub fn mark_damage(&mut self, damage: &Damage) {
        for r in damage.rects() {
            self.mark(*r);
        }
    }

    /// Marks what `other` marks; false (nothing changed) when the two grids differ (pictures
    /// whose sizes round up to the same tiles share a grid: a framebuffer of odd width and its
    /// even-sized I420 picture).
    pub fn union_with(&mut self, other: &TileMap) -> bool {
        if (self.cols, self.rows()) != (other.cols, other.rows()) {
            return false;
        }
        for (a, b) in self.marked.iter_mut().zip(&other.marked) {
            *a |= *b;
        }
        true
    }

    /// The marked tiles as rectangles in pixels, one per run of marked tiles in a tile row,
    /// clipped to the picture; top to bottom, left to right.
    pub fn spans(&self) -> impl Iterator<Item = Rect> + '_ {
        let tile = Self::TILE as usize;
        self.marked.chunks(self.cols.max(1)).enumerate().flat_map(move |(row, flags)| {
            let mut runs = Vec::new();
            let mut col = 0;
            while col < flags.len() {
                if !flags[col] {
                    col += 1;
                    continue;
                }
                let start = col;
                while col < flags.len() && flags[col] {
                    col += 1;
                }
                let r =
                    Rect::new((start * tile) as u32, (row * tile) as u32, ((col - start) * tile) as u32, tile as u32);
                runs.push(r.clipped_to(self.width, self.height));
            }
            runs
        })
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
        d.add(Rect::default());
        d.add(Rect::new(9, 9, 1, 1));
        let taken = d.take().unwrap();
        assert_eq!(taken.bounds(), Rect::new(0, 0, 10, 10));
        assert_eq!(taken.rects(), &[Rect::new(0, 0, 1, 1), Rect::new(9, 9, 1, 1)]);
        assert!(d.is_empty());
        assert!(d.rects().is_empty());
    }

    #[test]
    fn damage_past_its_limit_keeps_the_bounding_box() {
        let mut d = Damage::default();
        for i in 0..Damage::MAX_RECTS as u32 {
            d.add(Rect::new(i, 0, 1, 1));
        }
        assert_eq!(d.rects().len(), Damage::MAX_RECTS);
        d.add(Rect::new(0, 100, 1, 1));
        assert_eq!(d.rects(), &[Rect::new(0, 0, Damage::MAX_RECTS as u32, 101)]);
        d.add(Rect::new(5000, 0, 1, 1));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 5001, 101)]);
        let mut e = Damage::default();
        e.add(Rect::new(7000, 7000, 2, 2));
        e.merge(&d);
        assert_eq!(e.rects(), &[Rect::new(7000, 7000, 2, 2), Rect::new(0, 0, 5001, 101)]);
        assert_eq!(e.bounds(), Rect::new(0, 0, 7002, 7002));
    }

    #[test]
    fn tiles_cover_the_damage_and_nothing_between() {
        // A 100×40 picture: 7 × 3 tiles, the last column 4 pixels wide, the last row 8 high.
        let mut t = TileMap::new(100, 40);
        assert_eq!((t.cols(), t.rows()), (7, 3));
        assert!(t.is_empty());
        let mut d = Damage::default();
        d.add(Rect::new(1, 1, 2, 2)); // tile (0, 0)
        d.add(Rect::new(15, 20, 2, 1)); // tiles (0, 1) and (1, 1)
        d.add(Rect::new(97, 35, 50, 50)); // tile (6, 2), clipped
        d.add(Rect::new(500, 500, 5, 5)); // outside
        t.mark_damage(&d);
        assert_eq!(t.count(), 4);
        let spans: Vec<Rect> = t.spans().collect();
        assert_eq!(
            spans,
            [Rect::new(0, 0, 16, 16), Rect::new(0, 16, 32, 16), Rect::new(96, 32, 4, 8)],
            "runs of tiles, clipped to the picture"
        );
        // The box around the same damage would have taken every tile.
        let mut boxed = TileMap::new(100, 40);
        boxed.mark(d.bounds());
        assert_eq!(boxed.count(), 21);

        let mut other = TileMap::new(100, 40);
        other.mark(Rect::new(40, 0, 1, 1));
        assert!(t.union_with(&other));
        assert_eq!(t.count(), 5);
        assert!(t.union_with(&TileMap::new(99, 41)), "the same grid");
        assert!(!t.union_with(&TileMap::new(100, 49)), "grids of different sizes");
        t.clear();
        assert!(t.is_empty() && t.spans().next().is_none());
        t.mark_all();
        assert_eq!(t.spans().collect::<Vec<_>>().len(), 3);
        assert_eq!(TileMap::new(0, 0).spans().count(), 0);
        let mut huge = TileMap::new(33, 17);
        huge.mark(Rect::new(0, 0, u32::MAX, u32::MAX));
        assert_eq!(huge.count(), 6);
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
