//! Agent downtime during a switch, seen from outside the updater.
//!
//! `cargo run --release -p molt-tests --example bench-downtime -- [SWITCHES] [SOAK]`
//! publishes 1.0.0 and 2.0.0 (the `test-agent` stand-in and the real updater) in a signed
//! repository, installs 1.0.0 on a direct-mode host, then runs the real `updater` binary
//! SWITCHES times (default 20), alternating 1.0.0 → 2.0.0 → 1.0.0 … (`--allow-downgrade`,
//! `--soak SOAK`, default 200ms). `scripts/bench-downtime.sh` builds and runs it.
//!
//! A poller thread, outside the updater, looks every 2 ms whether the host's agent is alive
//! and healthy: `state/agent.pid` names a live process, `agent/health.json` names the same
//! pid, and its version is `current`'s version. For each switch it reports the gap from the
//! first sample where the old agent is no longer healthy to the first sample where the new
//! one is, split into phases (old agent gone → `current` switched → new pid in the pid file →
//! healthy), next to the updater's own `agent_downtime_ms` from `history.jsonl`.
//!
//! The baseline, measured in the same run, between the switches: a bare restart of the same
//! agent program by this process (SIGTERM, wait for the exit, spawn, wait until its
//! health.json names it), in a scratch root, polling every 0.1 ms. It is the cost of the
//! agent's own start, without the updater's journal, fsyncs and checks.

use molt_tests::stats::{max, median};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use molt_host::HostLayout;
use molt_host::state::{self, Health, Outcome};
use molt_schema::Version;
use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo, pid_alive};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How often the poller looks.
const POLL: Duration = Duration::from_millis(2);
/// How often the baseline looks: finer, since a bare restart takes about as long as one
/// poller interval.
const BARE_POLL: Duration = Duration::from_micros(100);

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into().into())
}

/// What one look at the host shows.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observation {
    /// The pid file's pid, when that process is alive (not a zombie).
    agent: Option<u32>,
    /// health.json's pid and version.
    health: Option<(u32, Version)>,
    /// `current`'s version.
    current: Option<Version>,
}

impl Observation {
    fn take(layout: &HostLayout) -> Observation {
        let agent = std::fs::read_to_string(layout.agent_pid())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|pid| pid_alive(*pid));
        let health = state::read_json::<Health>(&layout.health())
            .ok()
            .flatten()
            .map(|h| (h.pid, h.version));
        Observation {
            agent,
            health,
            current: layout.current_version(),
        }
    }

    fn healthy(&self) -> bool {
        match (&self.agent, &self.health, &self.current) {
            (Some(pid), Some((hpid, hversion)), Some(current)) => {
                pid == hpid && hversion == current
            }
            _ => false,
        }
    }
}

/// A change the poller saw: the observation from the sample at `at` on (the change happened
/// since the sample before, at most one sampling interval earlier).
#[derive(Clone, Debug)]
struct Change {
    at: Instant,
    obs: Observation,
}

#[derive(Debug, Default)]
struct PollLog {
    changes: Vec<Change>,
    samples: u64,
    /// The longest time between two samples.
    max_interval: Duration,
}

/// Polls `layout` every [`POLL`] until `stop`; records every change.
fn poller(layout: HostLayout, log: Arc<Mutex<PollLog>>, stop: Arc<AtomicBool>) {
    let mut last: Option<Observation> = None;
    let mut prev = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let obs = Observation::take(&layout);
        let at = Instant::now();
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        log.samples += 1;
        log.max_interval = log.max_interval.max(at - prev);
        if last.as_ref() != Some(&obs) {
            log.changes.push(Change {
                at,
                obs: obs.clone(),
            });
            last = Some(obs);
        }
        drop(log);
        prev = at;
        std::thread::sleep(POLL);
    }
}

/// One switch as the poller saw it.
#[derive(Debug)]
struct Gap {
    /// Old agent no longer healthy → new agent healthy.
    total: Duration,
    /// Old agent no longer healthy → `current` names the new version.
    to_link: Option<Duration>,
    /// → the pid file names a live new agent.
    to_pid: Option<Duration>,
    /// How many separate unhealthy stretches the switch had (1 when all is well).
    stretches: usize,
}

/// The gap in `changes` (those seen while the updater ran), for a switch to `to`.
fn gap(changes: &[Change], old_pid: u32, to: &Version) -> Option<Gap> {
    let down = changes.iter().position(|c| !c.obs.healthy())?;
    let t_down = changes[down].at;
    let up = changes
        .iter()
        .rposition(|c| c.obs.healthy() && c.obs.current.as_ref() == Some(to))?;
    if up < down {
        return None;
    }
    let t_up = changes[up].at;
    let after = &changes[down..=up];
    let first = |f: &dyn Fn(&Observation) -> bool| {
        after
            .iter()
            .find(|c| f(&c.obs))
            .map(|c| c.at.saturating_duration_since(t_down))
    };
    let stretches = changes
        .windows(2)
        .filter(|w| w[0].obs.healthy() && !w[1].obs.healthy())
        .count()
        + usize::from(!changes[0].obs.healthy());
    Some(Gap {
        total: t_up - t_down,
        to_link: first(&|o| o.current.as_ref() == Some(to)),
        to_pid: first(&|o| o.agent.is_some_and(|p| p != old_pid)),
        stretches,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A bare agent under a scratch root: the baseline.
struct Bare {
    root: tempfile::TempDir,
    program: PathBuf,
    child: Option<Child>,
}

impl Bare {
    fn new(program: &Path) -> Result<Bare> {
        Ok(Bare {
            root: tempfile::tempdir()?,
            program: program.to_owned(),
            child: None,
        })
    }

    fn spawn(&mut self) -> Result<u32> {
        let child = Command::new(&self.program)
            .arg("run")
            .env("MOLT_ROOT", self.root.path())
            .env("MOLT_HEALTH_NONCE", "bare")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    /// Polls until health.json names `pid`.
    fn wait_healthy(&self, pid: u32) -> Result<()> {
        let health = HostLayout::new(self.root.path()).health();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if state::read_json::<Health>(&health)
                .ok()
                .flatten()
                .is_some_and(|h| h.pid == pid)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return fail("the bare agent never reported healthy");
            }
            std::thread::sleep(BARE_POLL);
        }
    }

    /// SIGTERM, then polls until the agent has exited (and is reaped).
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return fail("the bare agent ignored SIGTERM");
            }
            std::thread::sleep(BARE_POLL);
        }
        Ok(())
    }

    /// One bare restart: from the old agent's exit to the new one's health report.
    fn restart(&mut self) -> Result<Duration> {
        self.stop()?;
        let exited = Instant::now();
        let pid = self.spawn()?;
        self.wait_healthy(pid)?;
        Ok(exited.elapsed())
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let switches: usize = match args.next() {
        Some(n) => n.parse().map_err(|_| "SWITCHES must be a number")?,
        None => 20,
    };
    let soak = args.next().unwrap_or_else(|| "200ms".into());

    let v1: Version = "1.0.0".parse()?;
    let v2: Version = "2.0.0".parse()?;
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    let mut host = TestHost::new(&repo);
    host.soak = soak.clone();
    let out = host.update("1.0.0", &[]);
    if !out.status.success() {
        return fail(format!(
            "first install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    host.assert_healthy();
    let layout = host.layout();

    let mut bare = Bare::new(&layout.version_dir(&v1).join("bin").join("agent"))?;
    let pid = bare.spawn()?;
    bare.wait_healthy(pid)?;

    let log = Arc::new(Mutex::new(PollLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (layout, log, stop) = (layout.clone(), Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || poller(layout, log, stop))
    };

    println!(
        "{switches} switches 1.0.0 <-> 2.0.0, soak {soak}, poller every {} ms; \
         baseline: bare restart of the same agent (exit -> healthy, polled every {} ms)",
        POLL.as_millis(),
        BARE_POLL.as_secs_f64() * 1000.0
    );
    println!(
        "{:>3}  {:<16} {:>7} | {:>9} {:>9} {:>9} | {:>10} {:>6} {:>7}",
        "#",
        "switch",
        "gap ms",
        "gone>link",
        "link>pid",
        "pid>ready",
        "updater ms",
        "run s",
        "bare ms"
    );
    let (mut gaps, mut reported, mut bares) = (Vec::new(), Vec::new(), Vec::new());
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut odd = Vec::new();
    let result = (|| -> Result<()> {
        for i in 0..switches {
            let (from, to) = if i % 2 == 0 { (&v1, &v2) } else { (&v2, &v1) };
            bares.push(ms(bare.restart()?));

            let old_pid = host.agent_pid().ok_or("no agent runs before the switch")?;
            let mark = log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .changes
                .len();
            let started = Instant::now();
            let out = host.update(&to.to_string(), &["--allow-downgrade"]);
            let run = started.elapsed();
            // Let the poller take at least one more sample after the updater exited.
            std::thread::sleep(POLL * 3);
            if !out.status.success() {
                return fail(format!(
                    "switch {} to {to} failed: {}",
                    i + 1,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let record = host.history().pop().ok_or("no history record")?;
            if record.to != *to || record.result != Outcome::Success {
                return fail(format!("switch {}: history says {record:?}", i + 1));
            }
            let changes = log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .changes
                .split_off(mark);
            let Some(g) = gap(&changes, old_pid, to) else {
                return fail(format!(
                    "switch {}: the poller saw no gap ({} changes)",
                    i + 1,
                    changes.len()
                ));
            };
            if g.stretches != 1 {
                odd.push(format!(
                    "switch {}: {} unhealthy stretches",
                    i + 1,
                    g.stretches
                ));
            }
            let updater_ms = record.timings.agent_downtime_ms.unwrap_or_default();
            let link = g.to_link.unwrap_or_default();
            let pid = g.to_pid.unwrap_or(link).max(link);
            let split = [ms(link), ms(pid - link), ms(g.total.saturating_sub(pid))];
            println!(
                "{:>3}  {:<16} {:>7.1} | {:>9.1} {:>9.1} {:>9.1} | {:>10} {:>6.2} {:>7.1}",
                i + 1,
                format!("{from} -> {to}"),
                ms(g.total),
                split[0],
                split[1],
                split[2],
                updater_ms,
                run.as_secs_f64(),
                bares[i],
            );
            for (phase, value) in phases.iter_mut().zip(split) {
                phase.push(value);
            }
            gaps.push(ms(g.total));
            #[allow(clippy::cast_precision_loss)]
            reported.push(updater_ms as f64);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    result?;

    let log = log.lock().unwrap_or_else(PoisonError::into_inner);
    println!();
    println!(
        "poller: {} samples, longest interval between samples {:.1} ms \
         (each gap is exact to about ±2 intervals)",
        log.samples,
        ms(log.max_interval)
    );
    for line in &odd {
        println!("odd: {line}");
    }
    let (gm, gx) = (median(&gaps), max(&gaps));
    let (rm, rx) = (median(&reported), max(&reported));
    let (bm, bx) = (median(&bares), max(&bares));
    println!("downtime seen by the poller:  median {gm:>7.1} ms  max {gx:>7.1} ms");
    println!(
        "  of which (medians): old gone -> current switched {:.1} ms, -> new pid in the pid \
         file {:.1} ms, -> new agent healthy {:.1} ms",
        median(&phases[0]),
        median(&phases[1]),
        median(&phases[2])
    );
    println!("updater's agent_downtime_ms:  median {rm:>7.1} ms  max {rx:>7.1} ms");
    println!("baseline bare restart:        median {bm:>7.1} ms  max {bx:>7.1} ms");
    println!(
        "ratio poller/baseline (medians): {:.2}   goal: median <= 250 ms: {}",
        gm / bm,
        if gm <= 250.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
