//! The health check (SPEC §6 step 9): is the agent we just started the one that reports
//! ready, and does it stay up?
//!
//! The new agent writes `agent/health.json` as soon as it is ready. It counts only when
//! its `nonce` is the one this start passed in `MOLT_HEALTH_NONCE` (so a file left by an
//! earlier start never counts), its `version` is the expected one, and its `pid` is the
//! service's main pid, alive and not a zombie, within the timeout. Then the same process
//! must stay up, with health.json unchanged, for the soak period.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use molt_host::HostLayout;
use molt_host::state::{self, Health, HealthStatus};
use molt_schema::Version;

use crate::service::ServiceManager;

/// What to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub expected_version: Version,
    /// The nonce passed to this start of the agent.
    pub nonce: String,
    /// How long the agent may take to report ready.
    pub timeout: Duration,
    /// How long it must then stay up.
    pub soak: Duration,
    /// How often to look.
    pub poll: Duration,
}

/// A passed health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// The agent's pid.
    pub pid: u32,
    /// From the start of the check to the agent reporting ready.
    pub ready_after: Duration,
}

/// A health.json from another start of the agent: its nonce is not this start's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleHealth {
    pub nonce: String,
    pub pid: u32,
    pub version: Version,
}

/// Why the new agent is not healthy. The messages are complete on their own: they go
/// into the history record.
#[derive(Debug, thiserror::Error)]
pub enum HealthFailure {
    /// The process was gone before it reported ready.
    #[error("the agent exited before it reported ready{}", exit_detail(*pid, *status))]
    ExitedAtStart {
        pid: Option<u32>,
        status: Option<ExitStatus>,
    },
    /// Still not ready when the timeout passed.
    #[error(
        "the agent did not report ready within {waited:?}{}",
        never_detail(stale, problem)
    )]
    NeverHealthy {
        waited: Duration,
        /// The health.json seen last, when it came from another start (a stale nonce).
        stale: Option<StaleHealth>,
        /// The last thing that kept a fresh report from counting, if any.
        problem: Option<String>,
    },
    /// The agent answered this start's nonce with another version.
    #[error("the agent reports version {reported}, expected {expected}")]
    WrongVersion {
        reported: Version,
        expected: Version,
    },
    /// The ready agent exited before the soak period was over.
    #[error("the agent (pid {pid}) died during the soak period{}", exit_detail(None, *status))]
    DiedDuringSoak {
        pid: u32,
        status: Option<ExitStatus>,
    },
    /// The service manager replaced the process (a crash loop under systemd).
    #[error(
        "the agent was restarted by its service manager (pid {from}, then {to}): it is crashing"
    )]
    Restarted { from: u32, to: u32 },
    /// health.json stopped describing the ready agent during the soak period.
    #[error("agent/health.json changed during the soak period of the agent (pid {pid}): {detail}")]
    HealthChanged { pid: u32, detail: String },
    /// The service manager could not say which process is the agent.
    #[error("cannot ask the service manager about the agent: {detail}")]
    Service { detail: String },
}

fn exit_detail(pid: Option<u32>, status: Option<ExitStatus>) -> String {
    match (pid, status) {
        (Some(pid), Some(status)) => format!(" (pid {pid}, {status})"),
        (Some(pid), None) => format!(" (pid {pid})"),
        (None, Some(status)) => format!(" ({status})"),
        (None, None) => String::new(),
    }
}

fn never_detail(stale: &Option<StaleHealth>, problem: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(s) = stale {
        out.push_str(&format!(
            "; agent/health.json is from another start (nonce {:?}, pid {}, version {}), not this one",
            s.nonce, s.pid, s.version
        ));
    }
    if let Some(p) = problem {
        out.push_str("; ");
        out.push_str(p);
    }
    out
}

/// Waits for the agent `svc` just started to report ready, then soaks it.
///
/// A restart that the service manager says was not its own (systemd's `Restart=` did not
/// count it, and the old process exited cleanly: an operator's `systemctl restart`, or
/// config management) is not the new version's fault: the check follows the new main
/// process, which must report ready for the expected version within the timeout, and the
/// soak starts again on it. At most [`MAX_FOLLOWS`] times; a crash is a failure as before.
pub fn wait_healthy(
    layout: &HostLayout,
    svc: &mut dyn ServiceManager,
    check: &HealthCheck,
) -> Result<HealthReport, HealthFailure> {
    let poll = check.poll.max(Duration::from_millis(1));
    let started = Instant::now();
    let mut follow = Follow {
        restarts_before: svc.restarts(),
        follows: 0,
    };
    let (pid, nonce) = match wait_ready(layout, svc, check, started, poll) {
        Ok(pid) => (pid, check.nonce.clone()),
        Err(failure @ HealthFailure::Restarted { from, .. }) => {
            match follow.restart(layout, svc, check, from, poll) {
                Some(followed) => followed?,
                None => return Err(failure),
            }
        }
        Err(failure) => return Err(failure),
    };
    let ready_after = started.elapsed();
    tracing::info!(pid, ?ready_after, soak = ?check.soak, "the agent reports ready; soaking");
    let pid = soak(layout, svc, check, (pid, nonce), poll, &mut follow)?;
    Ok(HealthReport { pid, ready_after })
}

/// The largest health report read: the agent writes about 200 bytes, and an unprivileged
/// agent's directory is not trusted.
pub const MAX_HEALTH_BYTES: u64 = 64 * 1024;

/// The agent's health report: `agent/health.json`, else `state/health.json` where agents
/// from before the split write it (a rollback to one), whichever `wanted` accepts first;
/// else the newer location's. Never through a link, never more than [`MAX_HEALTH_BYTES`].
pub fn read_health(
    layout: &HostLayout,
    wanted: impl Fn(&Health) -> bool,
) -> Result<Option<Health>, molt_host::state::StateError> {
    let current = state::read_json_capped::<Health>(&layout.health(), MAX_HEALTH_BYTES);
    if let Ok(Some(h)) = &current
        && wanted(h)
    {
        return current;
    }
    match state::read_json_capped::<Health>(&layout.legacy_health(), MAX_HEALTH_BYTES) {
        Ok(Some(h)) if wanted(&h) => Ok(Some(h)),
        legacy => match current {
            Ok(None) => legacy.or(Ok(None)),
            other => other,
        },
    }
}

/// How many restarts by hand one health check follows.
pub const MAX_FOLLOWS: u32 = 3;

/// Following restarts by hand during one health check.
struct Follow {
    /// The service manager's count of its own restarts when the check began.
    restarts_before: Option<u64>,
    follows: u32,
}

impl Follow {
    /// After the checked process `pid` went away or was replaced: `None` when that was not
    /// a restart by hand (or too many were followed already); else the new process, once
    /// it reports ready (its pid and its health nonce), or why it did not.
    fn restart(
        &mut self,
        layout: &HostLayout,
        svc: &mut dyn ServiceManager,
        check: &HealthCheck,
        pid: u32,
        poll: Duration,
    ) -> Option<Result<(u32, String), HealthFailure>> {
        let before = self.restarts_before?;
        if self.follows >= MAX_FOLLOWS {
            return None;
        }
        let new = svc.restarted_by_hand(pid, before, check.timeout)?;
        self.follows += 1;
        tracing::warn!(
            from = pid,
            to = new,
            "the agent was restarted during its health check, not by its service manager's \
             Restart=: checking the new process"
        );
        Some(wait_pid_ready(layout, svc, check, new, poll))
    }
}

/// Polls until health.json describes the process `pid`, ready at the expected version, and
/// that process is the service's main one: a restart by hand passes no nonce, so the pid
/// alone (the service manager's own word) says which start the report comes from.
fn wait_pid_ready(
    layout: &HostLayout,
    svc: &mut dyn ServiceManager,
    check: &HealthCheck,
    pid: u32,
    poll: Duration,
) -> Result<(u32, String), HealthFailure> {
    let started = Instant::now();
    let deadline = started + check.timeout;
    let mut problem = None;
    loop {
        match svc.main_pid() {
            Ok(Some(main)) if main != pid => {
                return Err(HealthFailure::Restarted {
                    from: pid,
                    to: main,
                });
            }
            Ok(Some(_)) if svc.is_alive(pid) => {}
            Ok(_) => {
                return Err(HealthFailure::ExitedAtStart {
                    pid: Some(pid),
                    status: svc.last_exit(),
                });
            }
            Err(e) => problem = Some(molt_schema::cli::one_line(&e)),
        }
        // Only agent/: a restart by hand passes no nonce, and a stale state/health.json
        // whose pid was reused must not count.
        match state::read_json_capped::<Health>(&layout.health(), MAX_HEALTH_BYTES) {
            Ok(Some(h)) if h.pid == pid && h.status == HealthStatus::Ready => {
                if h.version != check.expected_version {
                    return Err(HealthFailure::WrongVersion {
                        reported: h.version,
                        expected: check.expected_version.clone(),
                    });
                }
                return Ok((pid, h.nonce));
            }
            Ok(_) => {}
            Err(e) => problem = Some(molt_schema::cli::one_line(&e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HealthFailure::NeverHealthy {
                waited: now - started,
                stale: None,
                problem,
            });
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// Polls until health.json describes the running main process; returns its pid.
fn wait_ready(
    layout: &HostLayout,
    svc: &mut dyn ServiceManager,
    check: &HealthCheck,
    started: Instant,
    poll: Duration,
) -> Result<u32, HealthFailure> {
    let deadline = started + check.timeout;
    let mut first_pid: Option<u32> = None;
    let mut stale = None;
    let mut problem = None;
    loop {
        // The process first: a dead agent fails at once, whatever health.json says.
        let main = match svc.main_pid() {
            Ok(None) => {
                return Err(HealthFailure::ExitedAtStart {
                    pid: first_pid,
                    status: svc.last_exit(),
                });
            }
            Ok(Some(pid)) if !svc.is_alive(pid) => {
                return Err(HealthFailure::ExitedAtStart {
                    pid: Some(pid),
                    status: svc.last_exit(),
                });
            }
            Ok(Some(pid)) => match first_pid {
                Some(first) if first != pid => {
                    return Err(HealthFailure::Restarted {
                        from: first,
                        to: pid,
                    });
                }
                _ => {
                    first_pid = Some(pid);
                    Some(pid)
                }
            },
            Err(e) => {
                problem = Some(format!(
                    "cannot ask the service manager about the agent: {}",
                    molt_schema::cli::one_line(&e)
                ));
                None
            }
        };

        match read_health(layout, |h| h.nonce == check.nonce) {
            Ok(Some(h)) if h.nonce == check.nonce => {
                stale = None;
                if h.version != check.expected_version {
                    return Err(HealthFailure::WrongVersion {
                        reported: h.version,
                        expected: check.expected_version.clone(),
                    });
                }
                if h.status == HealthStatus::Stopping {
                    problem = Some(format!("the agent (pid {}) reports it is stopping", h.pid));
                } else if main == Some(h.pid) {
                    return Ok(h.pid);
                } else if let Some(main) = main {
                    problem = Some(format!(
                        "agent/health.json names pid {} but the service's main pid is {main}",
                        h.pid
                    ));
                }
            }
            Ok(Some(h)) => {
                stale = Some(StaleHealth {
                    nonce: h.nonce,
                    pid: h.pid,
                    version: h.version,
                })
            }
            Ok(None) => stale = None,
            // Writers replace the file atomically, so this is not a half-written report.
            Err(e) => problem = Some(molt_schema::cli::one_line(&e)),
        }

        let now = Instant::now();
        if now >= deadline {
            return Err(HealthFailure::NeverHealthy {
                waited: now - started,
                stale,
                problem,
            });
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// Checks that the ready process stays the service's main process, alive, with
/// health.json unchanged, until the soak period is over; the pid it ends on (another one
/// when a restart by hand was followed).
fn soak(
    layout: &HostLayout,
    svc: &mut dyn ServiceManager,
    check: &HealthCheck,
    (mut pid, mut nonce): (u32, String),
    poll: Duration,
    follow: &mut Follow,
) -> Result<u32, HealthFailure> {
    let mut end = Instant::now() + check.soak;
    loop {
        std::thread::sleep(end.saturating_duration_since(Instant::now()).min(poll));
        match soak_step(layout, svc, pid, &nonce) {
            Ok(service_error) => {
                if Instant::now() >= end {
                    return match service_error {
                        Some(detail) => Err(HealthFailure::Service { detail }),
                        None => Ok(pid),
                    };
                }
            }
            Err(failure) => match follow.restart(layout, svc, check, pid, poll) {
                Some(followed) => {
                    (pid, nonce) = followed?;
                    tracing::info!(pid, soak = ?check.soak, "the restarted agent reports ready; soaking it");
                    end = Instant::now() + check.soak;
                }
                None => return Err(failure),
            },
        }
    }
}

/// One look during the soak: a failure, or whether the service manager could not answer
/// (which fails the soak only if it lasts to the end).
fn soak_step(
    layout: &HostLayout,
    svc: &mut dyn ServiceManager,
    pid: u32,
    nonce: &str,
) -> Result<Option<String>, HealthFailure> {
    if !svc.is_alive(pid) {
        return Err(HealthFailure::DiedDuringSoak {
            pid,
            status: svc.last_exit(),
        });
    }
    let service_error = match svc.main_pid() {
        Ok(Some(main)) if main == pid => None,
        Ok(Some(main)) => {
            return Err(HealthFailure::Restarted {
                from: pid,
                to: main,
            });
        }
        Ok(None) => {
            return Err(HealthFailure::DiedDuringSoak {
                pid,
                status: svc.last_exit(),
            });
        }
        // Maybe passing (systemctl busy): it must answer before the soak is over.
        Err(e) => Some(molt_schema::cli::one_line(&e)),
    };
    let changed = match read_health(layout, |h| h.pid == pid) {
        Ok(Some(h)) if h.pid != pid => Some(format!("it now names pid {}", h.pid)),
        Ok(Some(h)) if h.nonce != nonce => Some(format!("it now carries nonce {:?}", h.nonce)),
        Ok(Some(h)) if h.status == HealthStatus::Stopping => {
            Some("the agent reports it is stopping".to_owned())
        }
        Ok(Some(_)) => None,
        Ok(None) => Some("it was removed".to_owned()),
        Err(e) => Some(molt_schema::cli::one_line(&e)),
    };
    match changed {
        Some(detail) => Err(HealthFailure::HealthChanged { pid, detail }),
        None => Ok(service_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceError;
    use molt_host::state::STATE_VERSION;

    /// A scripted service manager: `main_pid` answers from `mains` (the last answer
    /// repeats), and pids in `dead` are not alive.
    #[derive(Debug, Default)]
    struct Fake {
        mains: Vec<Result<Option<u32>, ()>>,
        calls: usize,
        dead: Vec<u32>,
        /// `restarts()`'s answer (systemd's NRestarts); `None` like direct mode.
        restarts: Option<u64>,
        /// What `restarted_by_hand` answers, and the health.json the restarted agent
        /// writes then (its version).
        by_hand: Option<(u32, HostLayout, &'static str)>,
    }

    impl ServiceManager for Fake {
        fn stop(&mut self) -> Result<(), ServiceError> {
            Ok(())
        }
        fn start(&mut self, _nonce: &str) -> Result<u32, ServiceError> {
            Ok(100)
        }
        fn main_pid(&mut self) -> Result<Option<u32>, ServiceError> {
            let i = self.calls.min(self.mains.len() - 1);
            self.calls += 1;
            self.mains[i].map_err(|()| ServiceError::BadMainPid {
                command: "systemctl show -p MainPID --value molt-agent".into(),
                output: "garbage".into(),
            })
        }
        fn is_alive(&mut self, pid: u32) -> bool {
            !self.dead.contains(&pid)
        }
        fn restarts(&mut self) -> Option<u64> {
            self.restarts
        }
        fn restarted_by_hand(&mut self, _pid: u32, _before: u64, _within: Duration) -> Option<u32> {
            let (new, layout, version) = self.by_hand.as_ref()?;
            write_health(layout, version, *new, "");
            Some(*new)
        }
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn write_health(layout: &HostLayout, version: &str, pid: u32, nonce: &str) {
        let h = Health {
            schema: STATE_VERSION,
            version: v(version),
            pid,
            nonce: nonce.into(),
            started_at: jiff::Timestamp::now(),
            status: HealthStatus::Ready,
        };
        state::write_json(&layout.health(), &h).unwrap();
    }

    fn check() -> HealthCheck {
        HealthCheck {
            expected_version: v("2.0.0"),
            nonce: "fresh".into(),
            timeout: Duration::from_millis(100),
            soak: Duration::from_millis(50),
            poll: Duration::from_millis(5),
        }
    }

    fn fixture() -> (tempfile::TempDir, HostLayout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        (dir, layout)
    }

    #[test]
    fn healthy_then_soaked() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100))],
            ..Fake::default()
        };
        let started = Instant::now();
        let report = wait_healthy(&layout, &mut svc, &check()).unwrap();
        assert_eq!(report.pid, 100);
        assert!(report.ready_after < Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50), "soaked");
    }

    #[test]
    fn health_of_another_pid_does_not_count() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 99, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100))],
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        match &err {
            HealthFailure::NeverHealthy {
                stale: None,
                problem: Some(p),
                ..
            } => assert!(p.contains("names pid 99"), "{p}"),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("main pid is 100"), "{err}");
    }

    #[test]
    fn a_stale_nonce_never_counts() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "old");
        let mut svc = Fake {
            mains: vec![Ok(Some(100))],
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        match &err {
            HealthFailure::NeverHealthy {
                stale: Some(s),
                waited,
                ..
            } => {
                assert_eq!(s.nonce, "old");
                assert!(*waited >= Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("from another start"), "{err}");
    }

    #[test]
    fn wrong_version() {
        let (_d, layout) = fixture();
        write_health(&layout, "1.9.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100))],
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(
            matches!(&err, HealthFailure::WrongVersion { reported, expected }
                if *reported == v("1.9.0") && *expected == v("2.0.0")),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the agent reports version 1.9.0, expected 2.0.0"
        );
    }

    #[test]
    fn exited_at_start() {
        let (_d, layout) = fixture();
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Ok(None)],
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(
            matches!(err, HealthFailure::ExitedAtStart { pid: Some(100), .. }),
            "{err:?}"
        );
        // a zombie main pid is dead too
        let mut svc = Fake {
            mains: vec![Ok(Some(100))],
            dead: vec![100],
            ..Fake::default()
        };
        write_health(&layout, "2.0.0", 100, "fresh");
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(
            matches!(err, HealthFailure::ExitedAtStart { pid: Some(100), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn restarted_during_soak() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Ok(Some(100)), Ok(Some(101))],
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(
            matches!(err, HealthFailure::Restarted { from: 100, to: 101 }),
            "{err:?}"
        );
    }

    #[test]
    fn a_restart_by_hand_during_soak_is_followed_and_soaked_again() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Ok(Some(100)), Ok(Some(101))],
            restarts: Some(0),
            by_hand: Some((101, layout.clone(), "2.0.0")),
            ..Fake::default()
        };
        let report = wait_healthy(&layout, &mut svc, &check()).unwrap();
        assert_eq!(report.pid, 101);
    }

    #[test]
    fn a_restart_by_hand_into_another_version_fails() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Ok(Some(100)), Ok(Some(101))],
            restarts: Some(0),
            by_hand: Some((101, layout.clone(), "1.0.0")),
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(matches!(err, HealthFailure::WrongVersion { .. }), "{err:?}");
    }

    #[test]
    fn a_restart_before_ready_by_hand_is_followed() {
        let (_d, layout) = fixture();
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Ok(Some(101))],
            restarts: Some(3),
            by_hand: Some((101, layout.clone(), "2.0.0")),
            ..Fake::default()
        };
        assert_eq!(wait_healthy(&layout, &mut svc, &check()).unwrap().pid, 101);
    }

    #[test]
    fn a_restart_the_manager_made_is_not_followed() {
        // The manager keeps count but says the restart was its own (or a crash).
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Ok(Some(100)), Ok(Some(101))],
            restarts: Some(0),
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(
            matches!(err, HealthFailure::Restarted { from: 100, to: 101 }),
            "{err:?}"
        );
    }

    #[test]
    fn restarted_before_ready() {
        let (_d, layout) = fixture();
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Ok(Some(101))],
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(
            matches!(err, HealthFailure::Restarted { from: 100, to: 101 }),
            "{err:?}"
        );
    }

    #[test]
    fn health_json_replaced_during_soak() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100))],
            ..Fake::default()
        };
        let mut c = check();
        c.soak = Duration::from_millis(300);
        let layout2 = layout.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            write_health(&layout2, "2.0.0", 100, "someone-else");
        });
        let err = wait_healthy(&layout, &mut svc, &c).unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(&err, HealthFailure::HealthChanged { pid: 100, detail } if detail.contains("someone-else")),
            "{err:?}"
        );
    }

    #[test]
    fn service_manager_errors_until_the_end_fail_the_soak() {
        let (_d, layout) = fixture();
        write_health(&layout, "2.0.0", 100, "fresh");
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Err(())],
            ..Fake::default()
        };
        let err = wait_healthy(&layout, &mut svc, &check()).unwrap_err();
        assert!(
            matches!(&err, HealthFailure::Service { detail } if detail.contains("garbage")),
            "{err:?}"
        );
        // and a transient one does not
        let mut svc = Fake {
            mains: vec![Ok(Some(100)), Err(()), Ok(Some(100))],
            ..Fake::default()
        };
        wait_healthy(&layout, &mut svc, &check()).unwrap();
    }
}
