//! The service managers and the health check against real processes: the `test-agent`
//! binary installed as `<root>/versions/<v>/bin/agent`, run directly (pid file, setsid,
//! SIGTERM then SIGKILL) or through a fake `systemctl` that records its calls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use molt_host::HostLayout;
use molt_host::state::{self, Health, HealthStatus};
use molt_schema::Version;
use molt_updater::health::{HealthCheck, HealthFailure, wait_healthy};
use molt_updater::service::{DirectService, ServiceError, ServiceManager, SystemdService};

const TEST_AGENT: &str = env!("CARGO_BIN_EXE_test-agent");
const UNIT: &str = "molt-agent.service";

/// A fake install root with test-agent as the agent of one version. Every process whose
/// program lives under the root is killed when the fixture is dropped.
struct Fixture {
    dir: tempfile::TempDir,
    layout: HostLayout,
    version: String,
}

impl Fixture {
    fn new(version: &str) -> Fixture {
        // Under the target directory, so the agent can be a hard link of the test binary.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let layout = HostLayout::new(dir.path().canonicalize().unwrap());
        install_agent(&layout, version);
        std::os::unix::fs::symlink(format!("versions/{version}"), layout.current_link()).unwrap();
        Fixture {
            dir,
            layout,
            version: version.to_owned(),
        }
    }

    fn root(&self) -> &Path {
        self.layout.root()
    }

    fn version(&self) -> Version {
        self.version.parse().unwrap()
    }

    /// A direct-mode service whose agent behaves as `behaviour`.
    fn direct(&self, behaviour: &str, grace: Duration) -> DirectService {
        DirectService::new(self.layout.clone(), grace)
            .with_env([(behaviour_key(&self.version), behaviour)])
    }

    fn check(&self, nonce: &str, timeout_ms: u64, soak_ms: u64) -> HealthCheck {
        HealthCheck {
            expected_version: self.version(),
            nonce: nonce.to_owned(),
            timeout: Duration::from_millis(timeout_ms),
            soak: Duration::from_millis(soak_ms),
            poll: Duration::from_millis(20),
        }
    }

    fn health(&self) -> Option<Health> {
        state::read_json(&self.layout.health()).unwrap()
    }

    fn pid_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.layout.agent_pid())
            .ok()
            .map(|s| s.trim().parse().unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.layout.agent_log()).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        kill_everything_under(self.dir.path());
    }
}

fn behaviour_key(version: &str) -> String {
    format!("MOLT_TEST_AGENT_{}", version.replace(['.', '-'], "_"))
}

/// `versions/<v>/bin/agent` (test-agent), `VERSION`, `.valid`.
fn install_agent(layout: &HostLayout, version: &str) {
    let v: Version = version.parse().unwrap();
    let dir = layout.version_dir(&v);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let agent = dir.join("bin/agent");
    if std::fs::hard_link(TEST_AGENT, &agent).is_err() {
        std::fs::copy(TEST_AGENT, &agent).unwrap();
        settle_executable(&agent);
    }
    std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
    std::fs::write(layout.valid_marker(&v), b"").unwrap();
}

/// Waits until `path` can be executed. A file just written may be held open for writing
/// by a child that another test thread forked meanwhile (until that child execs), and
/// exec fails with ETXTBSY while it is.
fn settle_executable(path: &Path) {
    for _ in 0..200 {
        match Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("cannot run {}: {e}", path.display()),
            Ok(_) => return,
        }
    }
    panic!("{} stays busy", path.display());
}

/// SIGKILLs every process whose program lives under `dir`.
fn kill_everything_under(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
            continue;
        };
        if exe.starts_with(&dir)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// `/proc/<pid>/stat`: (state, session), or `None` once the process is gone.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields[0].chars().next()?, fields[3].parse().ok()?))
}

/// Running: present and neither a zombie nor dead.
fn running(pid: u32) -> bool {
    proc_state(pid).is_some_and(|(s, _)| !matches!(s, 'Z' | 'X'))
}

#[test]
fn direct_start_is_healthy_soaks_and_stops_on_sigterm() {
    let fx = Fixture::new("1.0.0");
    let mut svc = fx.direct("ok", Duration::from_secs(5));
    let pid = svc.start("nonce-a").unwrap();
    assert_eq!(fx.pid_file(), Some(pid), "the pid file names the agent");

    let started = Instant::now();
    let report = wait_healthy(&fx.layout, &mut svc, &fx.check("nonce-a", 3000, 300)).unwrap();
    assert_eq!(report.pid, pid);
    assert!(report.ready_after < Duration::from_secs(2));
    assert!(started.elapsed() >= Duration::from_millis(300), "it soaked");
    let h = fx.health().unwrap();
    assert_eq!(
        (h.version, h.nonce.as_str(), h.pid, h.status),
        (fx.version(), "nonce-a", pid, HealthStatus::Ready)
    );
    assert_eq!(svc.main_pid().unwrap(), Some(pid));
    assert!(svc.is_alive(pid));

    let stopping = Instant::now();
    svc.stop().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "SIGTERM suffices: {:?}",
        stopping.elapsed()
    );
    assert!(!svc.is_alive(pid));
    assert!(!running(pid));
    assert_eq!(fx.pid_file(), None, "the pid file is removed");
    assert_eq!(svc.main_pid().unwrap(), None);
    let status = svc.last_exit().expect("our own child's exit is known");
    assert!(status.success(), "test-agent exits 0 on SIGTERM: {status}");
    assert!(fx.log().contains("SIGTERM, exiting"), "{}", fx.log());
    // stopping again is a no-op
    svc.stop().unwrap();
}

#[test]
fn stop_escalates_to_sigkill_after_the_grace_period() {
    let fx = Fixture::new("1.0.0");
    let grace = Duration::from_millis(300);
    let mut svc = fx.direct("ignore-term", grace);
    let pid = svc.start("n").unwrap();
    // ready means its SIGTERM handler is installed
    wait_healthy(&fx.layout, &mut svc, &fx.check("n", 3000, 0)).unwrap();

    let stopping = Instant::now();
    svc.stop().unwrap();
    let took = stopping.elapsed();
    assert!(took >= grace, "waited the grace period first: {took:?}");
    assert!(took < grace + Duration::from_secs(2), "{took:?}");
    assert!(!running(pid));
    assert_eq!(svc.last_exit().and_then(|s| s.signal()), Some(9), "SIGKILL");
    assert_eq!(fx.pid_file(), None);
}

#[test]
fn another_updater_finds_and_stops_the_agent_by_its_pid_file() {
    let fx = Fixture::new("1.0.0");
    let mut first = fx.direct("ok", Duration::from_secs(5));
    let pid = first.start("n").unwrap();
    wait_healthy(&fx.layout, &mut first, &fx.check("n", 3000, 0)).unwrap();
    drop(first);

    // a later run of the updater: not the agent's parent, only the pid file to go by
    let mut svc = fx.direct("ok", Duration::from_secs(5));
    assert_eq!(svc.main_pid().unwrap(), Some(pid));
    assert!(svc.is_alive(pid));
    match svc.start("again") {
        Err(ServiceError::AlreadyRunning { pid: p, .. }) => assert_eq!(p, pid),
        other => panic!("a second agent must not start: {other:?}"),
    }
    svc.stop().unwrap();
    assert!(!running(pid));
    assert!(!svc.is_alive(pid), "a zombie is not alive");
    assert_eq!(fx.pid_file(), None);
    assert_eq!(svc.main_pid().unwrap(), None);
    // we are its parent after all: reap it
    let _ = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::WaitOptions::empty(),
    );
}

#[test]
fn a_reused_pid_in_the_pid_file_is_never_signalled() {
    let fx = Fixture::new("1.0.0");
    // An agent of another install: same program name, another root.
    let other = Fixture::new("1.0.0");
    let mut bystander = Command::new(other.layout.current_agent())
        .arg("run")
        .env("MOLT_ROOT", other.root())
        .env("MOLT_HEALTH_NONCE", "other")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = bystander.id();
    state::write_atomic(&fx.layout.agent_pid(), format!("{pid}\n").as_bytes()).unwrap();

    let mut svc = fx.direct("ok", Duration::from_millis(200));
    assert_eq!(svc.main_pid().unwrap(), None, "not an agent of this root");
    svc.stop().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the other root's agent was signalled"
    );
    assert_eq!(fx.pid_file(), None, "the stale pid file is removed");

    // and the pid of a process that has exited is just stale
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    state::write_atomic(&fx.layout.agent_pid(), format!("{gone_pid}\n").as_bytes()).unwrap();
    assert_eq!(svc.main_pid().unwrap(), None);
    svc.start("n").unwrap();
    svc.stop().unwrap();

    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn exit_at_start_is_exited_at_start_with_its_status() {
    let fx = Fixture::new("2.0.0");
    let mut svc = fx.direct("exit-at-start", Duration::from_secs(1));
    let pid = svc.start("n").unwrap();
    let err = wait_healthy(&fx.layout, &mut svc, &fx.check("n", 3000, 300)).unwrap_err();
    match &err {
        HealthFailure::ExitedAtStart { status, .. } => {
            assert_eq!(status.and_then(|s| s.code()), Some(3), "{err}")
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("exit status: 3"), "{err}");
    assert!(!running(pid));
    svc.stop().unwrap();
}

#[test]
fn never_healthy_times_out() {
    let fx = Fixture::new("2.0.0");
    let mut svc = fx.direct("never-healthy", Duration::from_secs(1));
    svc.start("n").unwrap();
    let started = Instant::now();
    let err = wait_healthy(&fx.layout, &mut svc, &fx.check("n", 400, 300)).unwrap_err();
    match &err {
        HealthFailure::NeverHealthy {
            waited,
            stale: None,
            ..
        } => assert!(*waited >= Duration::from_millis(400), "{waited:?}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(fx.health().is_none());
    svc.stop().unwrap();
}

#[test]
fn wrong_version_is_reported() {
    let fx = Fixture::new("2.0.0");
    let mut svc = fx.direct("wrong-version", Duration::from_secs(1));
    svc.start("n").unwrap();
    let err = wait_healthy(&fx.layout, &mut svc, &fx.check("n", 3000, 300)).unwrap_err();
    match &err {
        HealthFailure::WrongVersion { reported, expected } => {
            assert_eq!(reported.to_string(), "0.0.0-wrong");
            assert_eq!(*expected, fx.version());
        }
        other => panic!("{other:?}"),
    }
    svc.stop().unwrap();
}

#[test]
fn wrong_nonce_never_counts() {
    let fx = Fixture::new("2.0.0");
    let mut svc = fx.direct("wrong-nonce", Duration::from_secs(1));
    let pid = svc.start("n").unwrap();
    let err = wait_healthy(&fx.layout, &mut svc, &fx.check("n", 400, 300)).unwrap_err();
    match &err {
        HealthFailure::NeverHealthy {
            stale: Some(stale), ..
        } => {
            assert_eq!(stale.nonce, "not-n");
            assert_eq!(stale.pid, pid, "the agent is up; only its nonce is wrong");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("another start"), "{err}");
    svc.stop().unwrap();
}

#[test]
fn crash_in_soak_is_died_during_soak() {
    let fx = Fixture::new("2.0.0");
    let mut svc = fx.direct("crash-in-soak", Duration::from_secs(1));
    let pid = svc.start("n").unwrap();
    let started = Instant::now();
    let err = wait_healthy(&fx.layout, &mut svc, &fx.check("n", 3000, 1500)).unwrap_err();
    match &err {
        HealthFailure::DiedDuringSoak { pid: p, status } => {
            assert_eq!(*p, pid);
            assert_eq!(status.and_then(|s| s.code()), Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "noticed before the soak was over: {:?}",
        started.elapsed()
    );
    svc.stop().unwrap();
}

#[test]
fn slow_start_is_healthy_within_the_timeout() {
    let fx = Fixture::new("2.0.0");
    let mut svc = fx.direct("slow-start", Duration::from_secs(1));
    // From before the start: the agent sleeps 1 s from its own start, which comes later, so
    // the health check cannot have seen it ready sooner (`ready_after` counts from after
    // `start` returned, which may already be a few milliseconds into that second).
    let before_start = std::time::Instant::now();
    let pid = svc.start("n").unwrap();
    let report = wait_healthy(&fx.layout, &mut svc, &fx.check("n", 3000, 200)).unwrap();
    assert_eq!(report.pid, pid);
    assert!(
        before_start.elapsed() >= Duration::from_secs(1),
        "{report:?}"
    );
    svc.stop().unwrap();
}

#[test]
fn a_health_file_from_an_earlier_start_never_counts() {
    let fx = Fixture::new("2.0.0");
    let mut svc = fx.direct("ok", Duration::from_secs(1));
    svc.start("first").unwrap();
    wait_healthy(&fx.layout, &mut svc, &fx.check("first", 3000, 0)).unwrap();
    svc.stop().unwrap();
    // health.json of the right version stays behind
    assert_eq!(fx.health().unwrap().nonce, "first");

    let mut svc = fx.direct("never-healthy", Duration::from_secs(1));
    svc.start("second").unwrap();
    let err = wait_healthy(&fx.layout, &mut svc, &fx.check("second", 400, 300)).unwrap_err();
    match &err {
        HealthFailure::NeverHealthy {
            stale: Some(stale), ..
        } => assert_eq!(stale.nonce, "first"),
        other => panic!("{other:?}"),
    }
    svc.stop().unwrap();
}

#[test]
fn the_agent_holds_no_descriptor_of_the_caller_and_has_its_own_session() {
    let fx = Fixture::new("1.0.0");
    // the updater's lock, held while it starts the agent
    let lock_path = fx.layout.lock();
    std::fs::create_dir_all(fx.layout.state_dir()).unwrap();
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();

    let mut svc = fx.direct("ok", Duration::from_secs(1));
    let pid = svc.start("n").unwrap();
    wait_healthy(&fx.layout, &mut svc, &fx.check("n", 3000, 0)).unwrap();

    let mut fds: Vec<(u32, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?))
        })
        .collect();
    fds.sort();
    assert!(
        fds.iter().all(|(_, target)| *target != lock_path),
        "the agent inherited the lock: {fds:?}"
    );
    let log = fx.layout.agent_log();
    assert_eq!(fds[0], (0, PathBuf::from("/dev/null")), "{fds:?}");
    assert_eq!(
        fds[1],
        (1, log.clone()),
        "stdout goes to agent.log: {fds:?}"
    );
    assert_eq!(fds[2], (2, log), "stderr goes to agent.log: {fds:?}");

    let (_, session) = proc_state(pid).unwrap();
    assert_eq!(session, pid, "the agent leads its own session (setsid)");
    svc.stop().unwrap();
    drop(lock);
}

/// A fake `systemctl` for one unit in `dir`: records every call in `calls.log`, keeps the
/// manager's environment in `env`, and runs the agent in the background as systemd would.
fn fake_systemctl(dir: &Path, root: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
dir='{dir}'
root='{root}'
[ "$1" = --version ] && {{ echo "systemd 999 (fake)"; exit 0; }}
echo "$*" >> "$dir/calls.log"
alive() {{
    [ -s "$dir/main.pid" ] || return 1
    pid=$(cat "$dir/main.pid")
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ]
}}
case "$1" in
set-environment)
    shift
    for kv in "$@"; do echo "$kv" >> "$dir/env"; done ;;
unset-environment)
    shift
    for k in "$@"; do
        grep -v "^$k=" "$dir/env" > "$dir/env.new" || true
        mv "$dir/env.new" "$dir/env"
    done ;;
start)
    alive && exit 0
    (
        set -a
        [ -f "$dir/env" ] && . "$dir/env"
        MOLT_ROOT="$root"
        exec "$root/current/bin/agent" run
    ) < /dev/null >> "$dir/agent.log" 2>&1 &
    echo $! > "$dir/main.pid" ;;
stop)
    if alive; then
        kill -TERM "$pid"
        while alive; do sleep 0.02; done
    fi
    rm -f "$dir/main.pid" ;;
show)
    if alive; then echo "$pid"; else echo 0; fi ;;
*)
    echo "fake systemctl: unknown command $1" >&2
    exit 1 ;;
esac
"#,
        dir = dir.display(),
        root = root.display()
    );
    write_script(&dir.join("systemctl"), &script)
}

fn write_script(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    settle_executable(path);
    path.to_owned()
}

fn calls(dir: &Path) -> Vec<String> {
    let mut calls: Vec<String> = std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    calls.dedup();
    calls
}

#[test]
fn systemd_start_health_and_stop_through_systemctl() {
    let fx = Fixture::new("3.0.0");
    let sd = fx.root().join("fake-systemd");
    let systemctl = fake_systemctl(&sd, fx.root());
    let mut svc = SystemdService::new(UNIT).with_systemctl(&systemctl);

    assert_eq!(svc.main_pid().unwrap(), None);
    let pid = svc.start("sd-nonce").unwrap();
    let report = wait_healthy(&fx.layout, &mut svc, &fx.check("sd-nonce", 3000, 300)).unwrap();
    assert_eq!(report.pid, pid, "health.json's pid is the unit's MainPID");
    assert_eq!(
        fx.health().unwrap().nonce,
        "sd-nonce",
        "the nonce reached the agent"
    );
    assert_eq!(
        std::fs::read_to_string(sd.join("env")).unwrap(),
        "",
        "the nonce is not left in the manager's environment"
    );

    svc.stop().unwrap();
    assert!(!running(pid));
    assert!(!svc.is_alive(pid));
    assert_eq!(svc.main_pid().unwrap(), None);

    let show = format!("show -p MainPID --value {UNIT}");
    assert_eq!(
        calls(&sd),
        [
            show.clone(),
            "set-environment MOLT_HEALTH_NONCE=sd-nonce".to_owned(),
            format!("start {UNIT}"),
            "unset-environment MOLT_HEALTH_NONCE".to_owned(),
            show.clone(),
            // The health check's count of systemd's own restarts.
            format!("show -p NRestarts --value {UNIT}"),
            show.clone(),
            format!("stop {UNIT}"),
            show,
        ]
    );
}

#[test]
fn systemd_failures_name_the_command_and_its_stderr() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = dir.path().join("calls.log");
    let systemctl = write_script(
        &dir.path().join("systemctl"),
        &format!(
            r#"#!/bin/sh
[ "$1" = --version ] && exit 0
echo "$*" >> '{log}'
case "$1" in
start) echo "Failed to start $2: Unit $2 not found." >&2; exit 5 ;;
show) echo "MainPID=12" ;;
esac
"#,
            log = log.display()
        ),
    );
    let mut svc = SystemdService::new(UNIT).with_systemctl(&systemctl);

    match svc.start("n") {
        Err(ServiceError::CommandFailed {
            command,
            status,
            stderr,
        }) => {
            assert_eq!(command, format!("{} start {UNIT}", systemctl.display()));
            assert_eq!(status.code(), Some(5));
            assert_eq!(
                stderr,
                format!("Failed to start {UNIT}: Unit {UNIT} not found.")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        calls(dir.path()),
        [
            "set-environment MOLT_HEALTH_NONCE=n".to_owned(),
            format!("start {UNIT}"),
            "unset-environment MOLT_HEALTH_NONCE".to_owned(),
        ],
        "the nonce is cleared even when the start fails"
    );

    let err = svc.main_pid().unwrap_err();
    assert!(
        matches!(&err, ServiceError::BadMainPid { output, .. } if output == "MainPID=12"),
        "{err:?}"
    );
    assert!(err.to_string().contains("show -p MainPID --value"), "{err}");
}

#[test]
fn stop_also_stops_an_agent_no_pid_file_recorded() {
    // An updater killed between spawning the agent and writing the pid file leaves an
    // untracked agent; the next stop must find it.
    let fx = Fixture::new("1.0.0");
    let agent = fx.root().join("current/bin/agent");
    let orphan = std::process::Command::new(&agent)
        .arg("run")
        .env("MOLT_ROOT", fx.root())
        .env("MOLT_HEALTH_NONCE", "orphan")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = orphan.id();
    assert!(fx.pid_file().is_none());
    let mut svc = fx.direct("ok", Duration::from_secs(2));
    svc.stop().unwrap();
    let mut orphan = orphan;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut exited = None;
    while exited.is_none() && std::time::Instant::now() < deadline {
        exited = orphan.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    if exited.is_none() {
        let _ = orphan.kill();
        let _ = orphan.wait();
        panic!("the untracked agent {pid} was left running");
    }
    assert!(!running(pid));
}
