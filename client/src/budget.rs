//! How many video frames to upload per rendered frame.
//!
//! Copying a decoded video frame into a texture costs little where the browser decodes on the
//! GPU, but a lot where it does not (software decoding with a software GL: ~90 ms per
//! 1024×768 frame was measured in headless Chromium on a 2-core host). Uploading all nine
//! panels in one frame would then stall the render loop, and in VR head tracking with it.
//! [`UploadBudget`] learns the cost of an upload from the frames' draw times and allows as
//! many uploads per frame as fit a time budget — always at least one, so every panel still
//! advances (the caller picks the panels that have waited longest).

/// Learns per-frame draw cost with and without uploads; I/O-free.
#[derive(Debug, Clone)]
pub struct UploadBudget {
    /// Time a frame may spend drawing, uploads included (ms).
    pub budget_ms: f64,
    /// Moving average of a frame's draw time without uploads (ms).
    base_ms: f64,
    /// Moving average of the extra draw time per upload (ms).
    per_upload_ms: f64,
}

const SMOOTHING: f64 = 0.2;

impl UploadBudget {
    pub fn new(budget_ms: f64) -> Self {
        // Optimistic start: uploads are assumed cheap until frames show otherwise.
        UploadBudget { budget_ms, base_ms: 2.0, per_upload_ms: 1.0 }
    }

    /// Uploads allowed in the next frame (at least 1).
    pub fn allowed(&self) -> usize {
        let room = (self.budget_ms - self.base_ms).max(0.0);
        ((room / self.per_upload_ms.max(0.05)).floor() as usize).max(1)
    }

    /// Learns from a frame that did `uploads` uploads and took `draw_ms` to draw.
    pub fn record(&mut self, uploads: usize, draw_ms: f64) {
        if !draw_ms.is_finite() || draw_ms < 0.0 {
            return;
        }
        if uploads == 0 {
            self.base_ms += (draw_ms - self.base_ms) * SMOOTHING;
        } else {
            let each = ((draw_ms - self.base_ms) / uploads as f64).max(0.0);
            self.per_upload_ms += (each - self.per_upload_ms) * SMOOTHING;
        }
    }

    /// The learnt cost of one upload (ms).
    pub fn per_upload_ms(&self) -> f64 {
        self.per_upload_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_uploads_are_all_allowed() {
        let mut b = UploadBudget::new(11.0);
        for _ in 0..50 {
            b.record(9, 2.0 + 9.0 * 0.3);
            b.record(0, 2.0);
        }
        assert!(b.allowed() >= 9, "{b:?} allows {}", b.allowed());
    }

    #[test]
    fn expensive_uploads_are_rationed_but_never_to_zero() {
        let mut b = UploadBudget::new(11.0);
        for _ in 0..50 {
            b.record(3, 8.0 + 3.0 * 90.0);
            b.record(0, 8.0);
        }
        assert_eq!(b.allowed(), 1);
        assert!((b.per_upload_ms() - 90.0).abs() < 1.0, "{b:?}");
    }

    #[test]
    fn adapts_when_the_cost_changes() {
        let mut b = UploadBudget::new(11.0);
        for _ in 0..50 {
            b.record(1, 2.0 + 30.0);
            b.record(0, 2.0);
        }
        assert_eq!(b.allowed(), 1);
        for _ in 0..50 {
            b.record(1, 2.0 + 1.0);
        }
        assert!(b.allowed() >= 8, "{}", b.allowed());
    }

    #[test]
    fn ignores_nonsense_times() {
        let mut b = UploadBudget::new(11.0);
        b.record(2, f64::NAN);
        b.record(2, -5.0);
        b.record(0, f64::INFINITY);
        assert_eq!(b.allowed(), 9);
    }
}
