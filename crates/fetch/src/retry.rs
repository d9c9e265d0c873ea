//! The one retry policy: capped exponential backoff with jitter.
//!
//! Every retry in molt goes through a [`RetryPolicy`]: package downloads (whose loop also
//! resumes and re-verifies, so it asks the policy for delays itself), the publisher's object
//! store calls ([`run`]), TUF metadata fetches, and the agent's report uploads and retries of
//! failed scheduled runs (schedules, not loops: the agent asks for [`RetryPolicy::delay`]
//! after each failure). The publisher's S3 client has the SDK's own
//! retries turned off, so attempts never multiply.
//!
//! The delay before retry `n` is `initial × factor^(n−1)` capped at `max`, of which the upper
//! half is random ("equal jitter"): a fleet that failed together does not come back together,
//! and no host waits less than half the nominal delay.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::transport::{TransferError, TransportError, TransportErrorKind};

/// How often, and how patiently, a failed operation is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (0 counts as 1). `u32::MAX` for a schedule
    /// that never gives up (the agent's reports).
    pub attempts: u32,
    /// The delay before the first retry; it is multiplied by `factor` for each further
    /// retry.
    pub initial: Duration,
    /// 2 for doubling; 0 and 1 keep every delay at `initial`.
    pub factor: u32,
    /// The longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// Package and self-update downloads: 5 attempts, 0.5 s before the first retry, at most
    /// 10 s between attempts.
    pub const DOWNLOAD: Self = Self {
        attempts: 5,
        initial: Duration::from_millis(500),
        factor: 2,
        max: Duration::from_secs(10),
    };

    /// The publisher's object store calls: 6 attempts, 0.5 s then doubling, at most 10 s:
    /// up to about 15 s of waiting (at least half of it), so a burst of S3 throttling
    /// (`SlowDown`) or a few 5xx costs a publish seconds, not a failed wave.
    pub const PUBLISH: Self = Self {
        attempts: 6,
        initial: Duration::from_millis(500),
        factor: 2,
        max: Duration::from_secs(10),
    };

    /// The agent's report uploads: never given up (reports wait in the spool), 30 s after
    /// the first failure, at most an hour between tries.
    pub const REPORTS: Self = Self {
        attempts: u32::MAX,
        initial: Duration::from_secs(30),
        factor: 2,
        max: Duration::from_secs(3600),
    };

    /// The agent's retries of a scheduled run that failed for a reason time may cure (the
    /// network, an expired timestamp): 3 retries, about 30 minutes, 2 hours and 8 hours
    /// after the failures (at least half of each), and never on or after the next slot.
    pub const SCHEDULED_RUNS: Self = Self {
        attempts: 4,
        initial: Duration::from_secs(30 * 60),
        factor: 4,
        max: Duration::from_secs(8 * 3600),
    };

    /// One attempt, no retry.
    pub const ONCE: Self = Self {
        attempts: 1,
        initial: Duration::ZERO,
        factor: 2,
        max: Duration::ZERO,
    };

    /// Attempts in all, at least 1.
    pub fn max_attempts(&self) -> u32 {
        self.attempts.max(1)
    }

    /// Whether another attempt is allowed after `made` attempts.
    pub fn allows_another(&self, made: u32) -> bool {
        made < self.max_attempts()
    }

    /// The delay before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = self
            .factor
            .max(1)
            .checked_pow(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let capped = self.initial.saturating_mul(factor).min(self.max);
        let half = capped / 2;
        let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 {
            0
        } else {
            random_u64() % span.saturating_add(1)
        };
        half.saturating_add(Duration::from_nanos(jitter))
    }
}

/// A random number for jitter: std's hasher keys are random per process and per call, and
/// cost no system call. (Jitter needs spread, not secrecy.)
fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// Runs `op` until it succeeds, fails with an error `retryable` refuses, or the policy's
/// attempts are spent; sleeps [`RetryPolicy::delay`] between attempts and logs each retry
/// with `what` (say, `"PUT s3://bucket/key"`). Returns the last attempt's result.
pub async fn run<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut made = 0u32;
    loop {
        made = made.saturating_add(1);
        match op().await {
            Err(error) if retryable(&error) && policy.allows_another(made) => {
                let delay = policy.delay(made);
                tracing::warn!(
                    attempt = made,
                    of = policy.max_attempts(),
                    retry_in = ?delay,
                    "{what}: {}; retrying",
                    molt_schema::cli::one_line(&error)
                );
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// Whether another attempt at a transfer may succeed where this one failed: connection
/// failures, truncated bodies, timeouts, 5xx, 408 and 429 may; not-found, other 4xx,
/// redirect refusals and local errors will not.
pub fn is_transient(error: &TransportError) -> bool {
    match error.kind() {
        TransportErrorKind::Other => match transfer_error(error) {
            Some(TransferError::Status { status }) => {
                *status >= 500 || *status == 408 || *status == 429
            }
            // Refused credentials, redirect refusals and a host without a certificate
            // store will be refused again.
            Some(
                TransferError::TooManyRedirects { .. }
                | TransferError::RedirectScheme { .. }
                | TransferError::CredentialsRefused { .. }
                | TransferError::NoCaCertificates,
            ) => false,
            _ => true,
        },
        _ => false,
    }
}

/// molt's own cause inside a transport error, if that is what it is.
pub fn transfer_error(error: &TransportError) -> Option<&TransferError> {
    std::error::Error::source(error)?.downcast_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let policy = RetryPolicy::DOWNLOAD;
        for (retry, full) in [
            (1, Duration::from_millis(500)),
            (2, Duration::from_secs(1)),
            (3, Duration::from_secs(2)),
            (5, Duration::from_secs(8)),
            (6, Duration::from_secs(10)),
            (40, Duration::from_secs(10)),
            (u32::MAX, Duration::from_secs(10)),
        ] {
            for _ in 0..50 {
                let delay = policy.delay(retry);
                assert!(delay >= full / 2 && delay <= full, "{retry}: {delay:?}");
            }
        }
        assert_eq!(RetryPolicy::ONCE.delay(3), Duration::ZERO);
        // Not all the same: the jitter is random.
        let delays: std::collections::BTreeSet<_> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(delays.len() > 1, "{delays:?}");
    }

    #[test]
    fn report_schedule_reaches_an_hour_and_stays_there() {
        let p = RetryPolicy::REPORTS;
        assert!(p.delay(1) >= Duration::from_secs(15) && p.delay(1) <= Duration::from_secs(30));
        for n in [8, 100, u32::MAX] {
            let d = p.delay(n);
            assert!(d >= Duration::from_secs(1800) && d <= Duration::from_secs(3600));
        }
        assert!(p.allows_another(u32::MAX - 1));
    }

    #[test]
    fn scheduled_runs_retry_three_times_at_about_30_min_2_h_and_8_h() {
        let p = RetryPolicy::SCHEDULED_RUNS;
        assert_eq!(p.max_attempts(), 4);
        for (retry, nominal) in [(1, 1800), (2, 7200), (3, 28_800), (4, 28_800)] {
            for _ in 0..50 {
                let d = p.delay(retry);
                let nominal = Duration::from_secs(nominal);
                assert!(d >= nominal / 2 && d <= nominal, "retry {retry}: {d:?}");
            }
        }
        // the jitter spreads a fleet that failed together
        let spread: std::collections::BTreeSet<_> = (0..20).map(|_| p.delay(1)).collect();
        assert!(spread.len() > 10, "{spread:?}");
    }

    #[test]
    fn zero_attempts_means_one() {
        let p = RetryPolicy {
            attempts: 0,
            ..RetryPolicy::PUBLISH
        };
        assert_eq!(p.max_attempts(), 1);
        assert!(!p.allows_another(1));
    }

    #[test]
    fn retry_classification() {
        let with = |kind, cause: TransferError| {
            TransportError::new_with_cause(kind, "http://example.com/a", cause)
        };
        let status = |status| with(TransportErrorKind::Other, TransferError::Status { status });
        assert!(is_transient(&status(500)));
        assert!(is_transient(&status(503)));
        assert!(is_transient(&status(429)));
        assert!(!is_transient(&status(400)));
        assert!(!is_transient(&with(
            TransportErrorKind::FileNotFound,
            TransferError::Status { status: 404 }
        )));
        assert!(is_transient(&with(
            TransportErrorKind::Other,
            TransferError::Deadline {
                limit: Duration::from_secs(1)
            }
        )));
        assert!(!is_transient(&with(
            TransportErrorKind::Other,
            TransferError::TooManyRedirects { max: 5 }
        )));
        assert!(!is_transient(&with(
            TransportErrorKind::Other,
            TransferError::NoCaCertificates
        )));
        assert!(!is_transient(&with(
            TransportErrorKind::Other,
            TransferError::CredentialsRefused {
                code: "SignatureDoesNotMatch".into()
            }
        )));
        assert!(is_transient(&TransportError::new_with_cause(
            TransportErrorKind::Other,
            "http://example.com/a",
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        )));
        assert!(!is_transient(&TransportError::new(
            TransportErrorKind::UnsupportedUrlScheme,
            "ftp://example.com/a"
        )));
    }

    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial: Duration::from_millis(1),
            factor: 2,
            max: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn run_retries_what_is_retryable_and_stops_at_the_limit() {
        use std::io::{Error, ErrorKind};
        let calls = AtomicU32::new(0);
        let transient = |e: &Error| e.kind() != ErrorKind::PermissionDenied;
        let r: Result<(), Error> = run(&fast(3), "GET x", transient, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::other("503"))
        })
        .await;
        assert_eq!(r.unwrap_err().to_string(), "503");
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // A permanent error: one call.
        calls.store(0, Ordering::SeqCst);
        let r: Result<(), Error> = run(&fast(3), "GET x", transient, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::from(ErrorKind::PermissionDenied))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Success on the second attempt.
        calls.store(0, Ordering::SeqCst);
        let r = run(&fast(5), "GET x", transient, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Error::from(ErrorKind::ConnectionReset))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
