//! Stalls measured from read times: how long a direction of a session went without a read
//! across a fault, and the same statistic over steady traffic before it. Pure functions over
//! recorded times (microseconds since the traffic's epoch), so that they can be tested alone.

use hdrhistogram::Histogram;

/// Gaps between reads shorter than this are not recorded: it is the resolution of every
/// stall figure, and keeps the record small for traffic that reads thousands of times a second.
pub const GAP_RESOLUTION_US: u64 = 1_000;
/// Gaps recorded per direction. At most one gap per `GAP_RESOLUTION_US` can be recorded, so
/// this covers at least 17 minutes of traffic.
const GAPS_RECORDED_MAX: usize = 1 << 20;

/// What one direction's receiving side saw: when it first and last read, and every gap of at
/// least [`GAP_RESOLUTION_US`] between two consecutive reads.
#[derive(Debug, Clone, Default)]
pub struct Reads {
    pub first_us: Option<u64>,
    pub last_us: Option<u64>,
    /// `(previous read, this read)`, in time order.
    gaps: Vec<(u64, u64)>,
}

/// The record of gaps is full: the run is longer than this harness can measure.
#[derive(Debug)]
pub struct Full;

impl Reads {
    /// Records a read at `now_us` (not before the previous one).
    pub fn record(&mut self, now_us: u64) -> Result<(), Full> {
        if let Some(last) = self.last_us {
            debug_assert!(now_us >= last, "reads are recorded in time order");
            if now_us.saturating_sub(last) >= GAP_RESOLUTION_US {
                if self.gaps.len() >= GAPS_RECORDED_MAX {
                    return Err(Full);
                }
                self.gaps.push((last, now_us));
            }
        } else {
            self.first_us = Some(now_us);
        }
        self.last_us = Some(now_us);
        Ok(())
    }

    /// The longest time without a read that overlaps the event `[from, to]`: the gap that
    /// spans an instantaneous event, or the longest of those during a lasting one. A
    /// direction that never read again counts until `end_us`. 0 means shorter than the
    /// resolution.
    pub fn stall_over(&self, from: u64, to: u64, end_us: u64) -> u64 {
        let recorded = self
            .gaps
            .iter()
            .filter(|(a, b)| *a <= to && *b > from)
            .map(|(a, b)| b - a)
            .max()
            .unwrap_or(0);
        let open = match self.last_us {
            Some(last) if last <= to && end_us > from => end_us.saturating_sub(last),
            None => end_us.saturating_sub(from),
            Some(_) => 0,
        };
        recorded.max(open)
    }

    /// The longest gap that ended in `(from, to]`: the steady-state statistic to compare a
    /// stall with.
    pub fn longest_gap_ending_in(&self, from: u64, to: u64) -> u64 {
        self.gaps
            .iter()
            .filter(|(_, b)| *b > from && *b <= to)
            .map(|(a, b)| b - a)
            .max()
            .unwrap_or(0)
    }

    /// The first read after `t` (within the resolution), if there was one.
    pub fn first_read_after(&self, t: u64) -> Option<u64> {
        let last = self.last_us?;
        if last <= t {
            return None;
        }
        if let Some(first) = self.first_us.filter(|f| *f > t) {
            return Some(first);
        }
        // The gap that spans `t` ends at the first read after it; no such gap means a read
        // followed within the resolution.
        Some(
            self.gaps
                .iter()
                .find(|(a, b)| *a <= t && *b > t)
                .map_or(t, |(_, b)| *b),
        )
    }
}

/// p50/p90/p99/p99.9/max of a set of durations, in seconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Quantiles of `values_us` through an HDR histogram (3 significant digits, up to an hour).
pub fn quantiles(values_us: &[u64]) -> anyhow::Result<Quantiles> {
    /// Longest duration the histogram holds; longer values are clamped to it.
    const HOUR_US: u64 = 3_600_000_000;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, HOUR_US, 3)?;
    for v in values_us {
        histogram.saturating_record((*v).clamp(1, HOUR_US));
    }
    let at = |q: f64| {
        if histogram.is_empty() {
            0.0
        } else {
            histogram.value_at_quantile(q) as f64 / 1e6
        }
    };
    Ok(Quantiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p999: at(0.999),
        max: histogram.max() as f64 / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads at these times (µs).
    fn reads(times: &[u64]) -> Reads {
        let mut r = Reads::default();
        for t in times {
            r.record(*t).expect("few reads");
        }
        r
    }

    enum Ask {
        StallOver(u64, u64, u64),
        LongestEndingIn(u64, u64),
        FirstReadAfter(u64),
    }

    fn check(times: &[u64], ask: Ask, want: Option<u64>) {
        let r = reads(times);
        let got = match ask {
            Ask::StallOver(from, to, end) => Some(r.stall_over(from, to, end)),
            Ask::LongestEndingIn(from, to) => Some(r.longest_gap_ending_in(from, to)),
            Ask::FirstReadAfter(t) => r.first_read_after(t),
        };
        assert_eq!(got, want, "reads {times:?}");
    }

    #[test]
    fn stalls_and_baselines() {
        let steady = [0, 10_000, 20_000, 30_000, 1_530_000, 1_540_000];
        // A kill at 31 ms: the gap that spans it.
        check(
            &steady,
            Ask::StallOver(31_000, 31_000, 2_000_000),
            Some(1_500_000),
        );
        // An event that lasts from 5 ms to 25 ms overlaps two 10 ms gaps.
        check(
            &steady,
            Ask::StallOver(5_000, 25_000, 2_000_000),
            Some(10_000),
        );
        // No read after the event: the stall lasts until the end of the traffic.
        check(
            &steady,
            Ask::StallOver(1_545_000, 1_545_000, 2_000_000),
            Some(460_000),
        );
        // Nothing read at all.
        check(&[], Ask::StallOver(100, 100, 1_100), Some(1_000));
        // Reads closer than the resolution record no gap.
        check(&[0, 500, 900], Ask::StallOver(600, 600, 900), Some(0));
        // Baseline: gaps ending in the window only, the spanning one excluded.
        check(&steady, Ask::LongestEndingIn(0, 31_000), Some(10_000));
        check(
            &steady,
            Ask::LongestEndingIn(30_000, 1_530_000),
            Some(1_500_000),
        );
        check(&steady, Ask::FirstReadAfter(31_000), Some(1_530_000));
        check(&steady, Ask::FirstReadAfter(1_540_000), None);
        check(&[0, 500, 900], Ask::FirstReadAfter(600), Some(600));
        check(&[700, 900], Ask::FirstReadAfter(600), Some(700));
    }

    #[test]
    fn quantiles_of_durations() {
        let q = quantiles(&[1_000, 2_000, 3_000, 1_500_000]).expect("valid bounds");
        assert!((q.p50 - 0.002).abs() < 1e-5, "{q:?}");
        assert!((q.max - 1.5).abs() < 1e-2, "{q:?}");
        assert_eq!(quantiles(&[]).expect("valid bounds").max, 0.0);
    }
}
