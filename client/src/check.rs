//! The check page's arithmetic (`/check.html`, `web/check.rs`): the render loop's time per
//! frame as p50/p95/max, dropped display frames from `requestAnimationFrame` timestamps, and a
//! panel's decode time per frame over the measurement. Pure; tested here.

use std::collections::VecDeque;

use serde::Serialize;

/// A rAF gap longer than this many times the median gap counts as dropped frames.
pub const DROP_FACTOR: f64 = 1.5;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spread {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub count: usize,
}

/// p50/p95/max of `values` (nearest rank), `None` when empty.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let v: VecDeque<f64> = values.iter().copied().collect();
    Some(Spread {
        p50: crate::hook::percentile(&v, 0.5)?,
        p95: crate::hook::percentile(&v, 0.95)?,
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        count: values.len(),
    })
}

/// Display frames from `requestAnimationFrame` timestamps (ms, ascending): the median interval
/// and how many frames were missed — a gap of `g` past `DROP_FACTOR` × the median misses
/// `round(g / median) − 1` frames.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DisplayFrames {
    pub frames: usize,
    pub median_interval_ms: f64,
    pub dropped: u64,
    /// Gaps longer than `DROP_FACTOR` × the median.
    pub long_gaps: usize,
}

pub fn display_frames(timestamps: &[f64]) -> Option<DisplayFrames> {
    let gaps: Vec<f64> = timestamps.windows(2).map(|w| w[1] - w[0]).filter(|g| *g > 0.0).collect();
    let median = crate::hook::percentile(&gaps.iter().copied().collect(), 0.5)?;
    let long: Vec<f64> = gaps.iter().copied().filter(|g| *g > DROP_FACTOR * median).collect();
    let dropped = long.iter().map(|g| ((g / median).round() as u64).saturating_sub(1).max(1)).sum();
    Some(DisplayFrames { frames: timestamps.len(), median_interval_ms: median, dropped, long_gaps: long.len() })
}

/// Milliseconds per decoded frame between two readings of `(framesDecoded, totalDecodeTime s)`;
/// `None` without frames in between.
pub fn decode_ms(before: (u32, f64), after: (u32, f64)) -> Option<f64> {
    let frames = after.0.checked_sub(before.0).filter(|f| *f > 0)?;
    Some((after.1 - before.1).max(0.0) * 1000.0 / frames as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        assert_eq!(spread(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(spread(&v), Some(Spread { p50: 51.0, p95: 95.0, max: 100.0, count: 100 }));
    }

    #[test]
    fn dropped_display_frames() {
        // 60 Hz with one 50 ms gap (two frames missed) and one 35 ms gap (one missed).
        let mut t = vec![0.0];
        for k in 1..=100 {
            let gap = match k {
                40 => 50.0,
                70 => 35.0,
                _ => 16.7,
            };
            t.push(t.last().unwrap() + gap);
        }
        let d = display_frames(&t).unwrap();
        assert!((d.median_interval_ms - 16.7).abs() < 1e-9);
        assert_eq!(d.long_gaps, 2);
        assert_eq!(d.dropped, 3);
        assert_eq!(d.frames, 101);
        assert_eq!(display_frames(&[5.0]), None);
        let steady: Vec<f64> = (0..50).map(|k| k as f64 * 11.1).collect();
        assert_eq!(display_frames(&steady).unwrap().dropped, 0);
    }

    #[test]
    fn decode_time_per_frame() {
        assert!((decode_ms((100, 0.5), (200, 0.7)).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(decode_ms((100, 0.5), (100, 0.5)), None);
        assert_eq!(decode_ms((100, 0.5), (0, 0.0)), None, "a new session");
    }
}
