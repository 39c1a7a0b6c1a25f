//! The one retry delay of the gateway's background connections (Redis, notification
//! sinks, health polls after failures).

use std::time::Duration;

/// Capped exponential backoff with jitter: attempt 1 → ~100 ms, doubling up to `cap`,
/// each delay drawn from [½, 1] of its step so replicas do not retry in lockstep.
pub fn backoff_delay(attempt: u32, cap: Duration) -> Duration {
    let step = Duration::from_millis(100).saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let step = step.min(cap);
    step.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let cap = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff_delay(attempt, cap);
            assert!(d <= cap, "{attempt}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{attempt}: {d:?}");
        }
        assert!(backoff_delay(30, cap) >= Duration::from_millis(2500));
    }
}
