//! Signed repositories and hosts for end-to-end tests, built at test time (committed
//! signed fixtures would expire).
//!
//! A [`TestRepo`] is a region's repository on disk, signed with fresh keys; each release
//! packages the real `updater` binary and the `test-agent` stand-in (which reads its
//! version from its install directory, so one binary serves every version). A
//! [`TestHost`] is an install root driven by the real `updater` binary in direct mode;
//! dropping it kills whatever agent it left running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use jiff::Timestamp;
use molt_host::HostLayout;
use molt_host::state::{self, Health, HistoryRecord};
use molt_publish::tuf::Expirations;
use molt_publish::tuf::keys::{self, KeyDir};
use molt_publish::tuf::repo::{self, AddOptions};
use molt_schema::manifest::Status;
use molt_schema::rollout::Rollout;
use molt_schema::{Platform, Region, Version};

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic_with(&format!("cannot build a tokio runtime: {e}")),
    }
}

#[allow(clippy::panic)]
fn panic_with(msg: &str) -> ! {
    panic!("{msg}")
}

fn check<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic_with(&format!("{what}: {e}")),
    }
}

/// A built binary of this workspace, next to the test executable's directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = check(std::env::current_exe(), "current_exe");
    // target/debug/deps/<test> → target/debug/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    if !path.exists() || bins_older_than(&dir, &exe) {
        build_workspace_bins(&dir, &exe);
    }
    if !path.exists() {
        panic_with(&format!(
            "{} is not built; run the tests with `cargo test --workspace`",
            path.display()
        ));
    }
    path
}

/// The file whose time says when the harness last built the workspace's binaries.
fn bins_stamp(profile_dir: &Path) -> PathBuf {
    profile_dir.join(".molt-bins.stamp")
}

/// Whether this test executable was built after the harness last built the binaries: a
/// test file run on its own after a change (`cargo test --workspace --test updater`) is
/// rebuilt, but the agent, the updater and the release tool are not, and must not be run
/// stale. A full run builds them with the tests, so the first test process's check is a
/// no-op build, and the stamp it leaves spares the others.
fn bins_older_than(profile_dir: &Path, exe: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&bins_stamp(profile_dir)), modified(exe)) {
        (Some(stamp), Some(exe)) => stamp < exe,
        _ => true,
    }
}

/// Builds every binary of the workspace into `profile_dir`, for a test file run on its own
/// (`cargo test -p molt-tests --test publish` builds only this crate's binaries, not the
/// release tool, the agent or the updater). It resolves features for the whole workspace
/// with an example, as `cargo test --workspace` does, so it reuses what that built. One
/// build at a time, under a file lock shared by every test process; a process that waited
/// for the lock checks again whether the build it waited for already did the work.
fn build_workspace_bins(profile_dir: &Path, exe: &Path) {
    let target_root = profile_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let lock = check(
        std::fs::File::create(target_root.join(".molt-bins.lock")),
        "create the workspace build lock",
    );
    check(lock.lock(), "take the workspace build lock");
    if bins_older_than(profile_dir, exe) {
        cargo_build(
            &["--bins", "--example", "bench-uptodate"],
            &target_root,
            &[],
            "the workspace's binaries",
        );
        check(
            std::fs::write(bins_stamp(profile_dir), b""),
            "write the workspace build stamp",
        );
    }
    drop(lock);
}

/// Runs `cargo build --quiet --locked --offline --workspace <args>` on this workspace, for
/// the test harness's own builds (a missing binary, a stamped version).
fn cargo_build(args: &[&str], target_dir: &Path, env: &[(&str, &std::ffi::OsStr)], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("Cargo.toml"))
        .unwrap_or_default();
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "--locked", "--offline", "--workspace"])
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("MOLT_BUILD_VERSION")
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = check(cmd.status(), &format!("run cargo build for {what}"));
    if !status.success() {
        panic_with(&format!("cargo build for {what} failed"));
    }
}

/// A region's signed repository on disk.
#[derive(Debug)]
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub keys: KeyDir,
    pub region: Region,
}

impl TestRepo {
    pub fn new(region: &str) -> TestRepo {
        let dir = check(tempfile::tempdir(), "tempdir");
        let keys = check(
            keys::generate(&dir.path().join("keys"), 1, 1),
            "generate keys",
        );
        let region: Region = check(region.parse(), "region");
        let repo = dir.path().join("repo");
        check(
            runtime().block_on(repo::init(
                &repo,
                &region,
                &keys,
                &Expirations::default(),
                Timestamp::now(),
            )),
            "repo init",
        );
        TestRepo { dir, keys, region }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn trusted_root(&self) -> PathBuf {
        self.keys.dir.join("root.json")
    }

    /// `file://` URL of the repository.
    pub fn url(&self) -> String {
        format!("file://{}/", self.path().display())
    }

    /// Packages the test agent and the real updater as `version` for `platform`.
    pub fn package(&self, version: &str, platform: Platform) -> PathBuf {
        let dist = self.dir.path().join("dist");
        let v: Version = check(version.parse(), "version");
        check(
            molt_archive::package::package(
                &v,
                platform,
                &workspace_bin("test-agent"),
                &workspace_bin("updater"),
                &dist,
            ),
            "package",
        );
        dist
    }

    /// Publishes `version` for linux-amd64 (the test machines' platform) with `status`.
    pub fn publish(&self, version: &str, status: Status) {
        self.publish_with(
            version,
            status,
            None,
            Platform::detect().unwrap_or(Platform::LinuxAmd64),
        );
    }

    pub fn publish_with(
        &self,
        version: &str,
        status: Status,
        rollout: Option<Rollout>,
        platform: Platform,
    ) {
        let dist = self.package(version, platform);
        let opts = AddOptions {
            version: check(version.parse(), "version"),
            status,
            rollout,
        };
        check(
            runtime().block_on(repo::add(
                &self.path(),
                &dist,
                &opts,
                &self.keys,
                &Expirations::default(),
                Timestamp::now(),
            )),
            "add",
        );
    }

    /// Publishes `version` with the given programs as `bin/agent` and `bin/updater`.
    pub fn publish_programs(&self, version: &str, agent: &Path, updater: &Path) {
        let platform = Platform::detect().unwrap_or(Platform::LinuxAmd64);
        let dist = self.dir.path().join(format!("dist-{version}"));
        let v: Version = check(version.parse(), "version");
        check(
            molt_archive::package::package(&v, platform, agent, updater, &dist),
            "package",
        );
        let opts = AddOptions {
            version: v,
            status: Status::Active,
            rollout: None,
        };
        check(
            runtime().block_on(repo::add(
                &self.path(),
                &dist,
                &opts,
                &self.keys,
                &Expirations::default(),
                Timestamp::now(),
            )),
            "add",
        );
    }

    pub fn set_status(&self, version: &str, status: Status) {
        let v: Version = check(version.parse(), "version");
        check(
            runtime().block_on(repo::set_status(
                &self.path(),
                &v,
                status,
                &self.keys,
                &Expirations::default(),
                Timestamp::now(),
            )),
            "set-status",
        );
    }

    /// `refresh` as of `now`, the timestamp expiring `timestamp_expires` later (the other
    /// roles as by default): a `now` in the past signs a timestamp that has expired.
    pub fn refresh_at(&self, now: Timestamp, timestamp_expires: Duration) {
        let exp = Expirations {
            timestamp: timestamp_expires,
            ..Expirations::default()
        };
        check(
            runtime().block_on(repo::refresh(&self.path(), &self.keys, &exp, now)),
            "refresh",
        );
    }

    /// The file holding a published target, e.g. `molt-agent-2.0.0-linux-amd64.tar.gz`.
    pub fn target_file(&self, name: &str) -> PathBuf {
        let mut found = None;
        let mut stack = vec![self.path().join("targets")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .strip_prefix(self.path().join("targets"))
                    .ok()
                    .and_then(|rel| {
                        rel.to_str()
                            .and_then(|r| r.split_once('.'))
                            .map(|(_, n)| n == name)
                    })
                    .unwrap_or(false)
                {
                    found = Some(p);
                }
            }
        }
        found.unwrap_or_else(|| panic_with(&format!("no target file for {name}")))
    }
}

/// An install root driven by the real `updater` binary in direct mode.
#[derive(Debug)]
pub struct TestHost {
    pub root: tempfile::TempDir,
    pub source: String,
    pub region: String,
    pub trusted_root: PathBuf,
    /// Extra environment for the updater (and, through it, the agent).
    pub env: Vec<(String, String)>,
    pub soak: String,
    pub health_timeout: String,
}

impl TestHost {
    pub fn new(repo: &TestRepo) -> TestHost {
        TestHost::with_root(repo, check(tempfile::tempdir(), "tempdir"))
    }

    /// A host whose install root is a new directory under `parent` (a filesystem of the
    /// test's own, such as a small tmpfs).
    pub fn new_in(repo: &TestRepo, parent: &Path) -> TestHost {
        TestHost::with_root(repo, check(tempfile::tempdir_in(parent), "tempdir"))
    }

    fn with_root(repo: &TestRepo, root: tempfile::TempDir) -> TestHost {
        // An explicit, empty config: the command line carries the settings.
        check(
            std::fs::write(root.path().join("agent.toml"), "# test host\n"),
            "write config",
        );
        TestHost {
            root,
            source: repo.url(),
            region: repo.region.to_string(),
            trusted_root: repo.trusted_root(),
            env: Vec::new(),
            soak: "300ms".into(),
            health_timeout: "5s".into(),
        }
    }

    pub fn layout(&self) -> HostLayout {
        HostLayout::new(self.root.path())
    }

    /// The updater command with this host's settings; add the arguments of the run.
    pub fn updater(&self) -> Command {
        self.updater_program(&workspace_bin("updater"))
    }

    /// Like [`TestHost::updater`], running another updater program (e.g. `<root>/bin/updater`).
    pub fn updater_program(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.arg("--root")
            .arg(self.root.path())
            .env("MOLT_CONFIG", self.root.path().join("agent.toml"))
            .env_remove("MOLT_LOG")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            // Tests reach nothing but loopback: no IMDS probe for the instance id or region.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("MOLT_TEST_KILL_AT");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `updater --target-version <target>` with this host's source, region, trusted root,
    /// direct service control and a short soak, plus `extra` arguments.
    pub fn update_cmd(&self, target: &str, extra: &[&str]) -> Command {
        self.update_cmd_via(&workspace_bin("updater"), target, extra)
    }

    /// [`TestHost::update_cmd`] with another updater program.
    pub fn update_cmd_via(&self, program: &Path, target: &str, extra: &[&str]) -> Command {
        let mut c = self.updater_program(program);
        c.args([
            "--target-version",
            target,
            "--source",
            &self.source,
            "--region",
            &self.region,
            "--service",
            "direct",
        ])
        .arg("--trusted-root")
        .arg(&self.trusted_root)
        .args([
            "--soak",
            &self.soak,
            "--health-timeout",
            &self.health_timeout,
        ])
        .args(extra);
        c
    }

    pub fn update(&self, target: &str, extra: &[&str]) -> Output {
        check(self.update_cmd(target, extra).output(), "run updater")
    }

    pub fn recover(&self) -> Output {
        let mut c = self.updater();
        c.args(["recover", "--service", "direct"]);
        check(c.output(), "run updater recover")
    }

    pub fn current(&self) -> Option<Version> {
        self.layout().current_version()
    }

    pub fn history(&self) -> Vec<HistoryRecord> {
        state::read_history(&self.layout().history()).unwrap_or_default()
    }

    pub fn health(&self) -> Option<Health> {
        state::read_json(&self.layout().health()).ok().flatten()
    }

    /// The running agent's pid, from the pid file, if that process is alive.
    pub fn agent_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.layout().agent_pid()).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        pid_alive(pid).then_some(pid)
    }

    /// A string field of the journal (`step`, `id`), if a journal parses.
    pub fn journal_field(&self, name: &str) -> Option<String> {
        journal_field(&self.layout().journal(), name)
    }

    /// Every version with `.valid` still has exactly the files it was installed with:
    /// nothing (a kill while it was removed, above all) leaves the marker beside a
    /// missing or changed file.
    pub fn assert_versions_whole(&self) {
        let layout = self.layout();
        for v in layout.installed_versions() {
            if layout.is_valid(&v)
                && let Err(e) = molt_host::installed::check(&layout, &v)
            {
                panic_with(&format!("{v} is marked valid but {e}"));
            }
        }
    }

    /// The invariant every test ends on: `current` points at a valid version, every
    /// version marked valid is whole, and an agent of the current version runs and
    /// reported healthy.
    pub fn assert_healthy(&self) -> Version {
        self.assert_versions_whole();
        let current = self
            .current()
            .unwrap_or_else(|| panic_with("current points at no valid version"));
        // Waits long enough for an agent started just now on a loaded machine (CI runs
        // hundreds of tests on two cores); a healthy host answers at once.
        let pid = wait_for(Duration::from_secs(15), || self.agent_pid())
            .unwrap_or_else(|| panic_with(&format!("no agent runs for {current}")));
        let health = wait_for(Duration::from_secs(15), || {
            self.health().filter(|h| h.pid == pid)
        })
        .unwrap_or_else(|| panic_with(&format!("agent {pid} never reported healthy")));
        if health.version != current {
            panic_with(&format!(
                "agent reports {} but current is {current}",
                health.version
            ));
        }
        current
    }

    /// Kills the agent this host runs, if any.
    pub fn kill_agent(&self) {
        if let Some(pid) = self.agent_pid() {
            kill(pid);
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// Polls `f` until it returns `Some`, or `limit` passes.
/// The checkpoints of an update, in order: journal steps, plus "downloaded" and
/// "switched_link" (the instants between a step's record and its completion); the last two
/// are a rollback's. The updater's test hooks kill, fill the disk or remount there.
pub const CHECKPOINTS: [&str; 10] = [
    "started",
    "downloaded",
    "installed",
    "stopping",
    "switching",
    "switched_link",
    "switched",
    "committed",
    "rolling_back",
    "rolled_back",
];

/// A string field of the journal at `journal`, if it parses.
pub fn journal_field(journal: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(journal)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|j| j[name].as_str().map(str::to_owned))
}

pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGKILLs `pid`.
pub fn kill(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// The real `agent` and `updater` built with `MOLT_BUILD_VERSION=version`, for tests that
/// need two real versions of the agent. Returns the directory holding both binaries.
///
/// Only the binaries' `main.rs` reads the variable (`molt_host::build`), so a stamped build
/// recompiles those two files and links them, and reuses everything else this build
/// compiled: it shares this build's intermediate directory (cargo's `build.build-dir`)
/// and resolves features for the whole workspace with its examples, as `cargo test
/// --workspace` does, so every other unit's fingerprint matches. Its binaries land in a
/// target directory of their own (`<target>/stamped/<version>`), so this build's are
/// never replaced. Builds run one at a time under a file lock shared by every test process;
/// a later call for the same version is cargo's no-op check.
pub fn stamped_build(version: &str) -> PathBuf {
    let profile_dir = workspace_bin("updater")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let target_root = profile_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let stamped = target_root.join("stamped");
    let artifacts = stamped.join(version);
    let out = artifacts.join("bin");
    check(
        std::fs::create_dir_all(&out),
        "create the stamped directory",
    );
    let lock = check(
        std::fs::File::create(stamped.join(".lock")),
        "create the stamped build lock",
    );
    check(lock.lock(), "take the stamped build lock");
    let build_dir = std::env::var_os("CARGO_BUILD_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_root.clone());
    cargo_build(
        // An example makes cargo resolve dev-dependencies' features too, exactly as the
        // test build did; without it, shared dependencies would be rebuilt.
        &[
            "--bin",
            "agent",
            "--bin",
            "updater",
            "--example",
            "bench-uptodate",
        ],
        &artifacts,
        &[
            ("CARGO_BUILD_BUILD_DIR", build_dir.as_os_str()),
            ("MOLT_BUILD_VERSION", std::ffi::OsStr::new(version)),
        ],
        &format!("MOLT_BUILD_VERSION={version}"),
    );
    for name in ["agent", "updater"] {
        let built = artifacts.join("debug").join(name);
        let dest = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        check(std::fs::copy(&built, &tmp), "copy a stamped binary");
        // Without symbols the programs are half the size: every test that packages them
        // (the fleet installs them 80 times) hashes, compresses and unpacks less. `strip`
        // comes with the C toolchain the build needs anyway; without it they stay as built.
        let _ = Command::new("strip")
            .arg(&tmp)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        check(std::fs::rename(&tmp, &dest), "place a stamped binary");
    }
    drop(lock);
    out
}
