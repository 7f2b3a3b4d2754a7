//! Small statistics over measured durations.

use std::time::Duration;

/// Median and 90th percentile of `samples`.
pub fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How many times `floor` `measured` takes.
pub fn ratio(measured: Duration, floor: Duration) -> f64 {
    measured.as_secs_f64() / floor.as_secs_f64().max(1e-9)
}

/// What a report says of a target: met or missed.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "meets" } else { "MISSES" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        let mut s: Vec<Duration> = (1..=10).rev().map(Duration::from_millis).collect();
        let (p50, p90) = summary(&mut s);
        assert_eq!(p50, Duration::from_millis(6));
        assert_eq!(p90, Duration::from_millis(9));
    }
}
