//! Latency histograms: one shape for the gateway's stats and the load generator's records.

use hdrhistogram::Histogram;

/// A histogram of 1 µs to one hour at `sigfig` significant digits (the gateway ships 2,
/// 1 % resolution, every interval; the load generator uses 3: 0.1 % resolution).
pub fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, sigfig).unwrap_or_else(|_| {
        Histogram::new(sigfig.min(5)).unwrap_or_else(|_| unreachable_histogram())
    })
}

#[cold]
fn unreachable_histogram() -> Histogram<u64> {
    // new(n) only fails for sigfig > 5; kept total for the no-panic rule.
    std::process::abort()
}

/// Records `v` µs, clamping into the histogram's range instead of failing.
pub fn record(h: &mut Histogram<u64>, v: u64) {
    let v = v.clamp(1, h.high());
    let _ = h.record(v);
}
