//! A real systemd, booted in a container, for the tests of molt's production path (the
//! units in `agent/deploy/`, `systemctl`, transient units, the journal, a reboot).
//!
//! [`Machine::boot`] copies the base root filesystem that `scripts/systemd-bed.sh` builds
//! (a minimal Debian with systemd, made by debootstrap and cached under `target/`), boots
//! it with `systemd-nspawn --boot`, and waits until `systemctl is-system-running` answers.
//! Commands run inside through `nsenter` into every namespace of the container's systemd.
//! The test machine has no systemd of its own, hence `--register=no --keep-unit`.
//!
//! The container shares the host's network and sees the directories the test binds in at
//! the same paths, so a repository's `file://` URL is the same inside and out. Its root
//! filesystem is a plain directory here: a test reads `/opt/molt` through
//! [`Machine::path`]. Dropping a [`Machine`] powers it off (killing it if it does not
//! stop) and removes its files, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The base root filesystem's directory (set by `scripts/systemd-bed.sh`).
pub const BASE_ENV: &str = "MOLT_SYSTEMD_BASE";
/// Where machines' root filesystems go (set by the script, so that it can remove what a
/// killed test left behind); a temporary directory otherwise.
pub const MACHINES_ENV: &str = "MOLT_SYSTEMD_MACHINES";
/// Every machine's name starts with this (the script stops any left running).
pub const NAME_PREFIX: &str = "molt-bed-";

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[allow(clippy::panic)]
fn fail(msg: &str) -> ! {
    panic!("{msg}")
}

fn check<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| fail(&format!("{what}: {e}")))
}

/// A booted container running systemd.
#[derive(Debug)]
pub struct Machine {
    dir: tempfile::TempDir,
    name: String,
    binds: Vec<PathBuf>,
    nspawn: Option<Child>,
    /// The container's systemd (PID 1 inside), as a pid of the test machine.
    leader: u32,
    boots: u32,
}

impl Machine {
    /// Boots a fresh copy of the base root filesystem, with each of `binds` (directories
    /// of the test machine) mounted read-only at the same path inside.
    pub fn boot(binds: &[&Path]) -> Machine {
        let base = std::env::var_os(BASE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                fail(&format!(
                    "{BASE_ENV} is not set: these tests need a real systemd; run them with \
                 `bash scripts/systemd-bed.sh`, which builds the container and sets it"
                ))
            });
        if !base.join("usr/lib/systemd/systemd").exists() {
            fail(&format!(
                "{} holds no systemd: rebuild it with `bash scripts/systemd-bed.sh`",
                base.display()
            ));
        }
        let mut m = Machine::copy_of(&base, binds.iter().map(|p| p.to_path_buf()).collect());
        m.start();
        m
    }

    /// Another machine booted from a copy of this one's root filesystem (this one must be
    /// powered off): an instance made from a baked image. `edit` changes the copy before it
    /// boots (its machine id, say).
    pub fn clone_stopped(&self, edit: impl FnOnce(&Path)) -> Machine {
        if self.nspawn.is_some() {
            fail("power the machine off before cloning it");
        }
        let mut m = Machine::copy_of(&self.rootfs(), self.binds.clone());
        edit(&m.rootfs());
        m.start();
        m
    }

    /// A machine, not yet booted, whose root filesystem is a copy of `from`.
    fn copy_of(from: &Path, binds: Vec<PathBuf>) -> Machine {
        let dir = match std::env::var_os(MACHINES_ENV) {
            Some(parent) => {
                check(
                    std::fs::create_dir_all(&parent),
                    "create the machines directory",
                );
                check(tempfile::tempdir_in(parent), "tempdir")
            }
            None => check(tempfile::tempdir(), "tempdir"),
        };
        let rootfs = dir.path().join("rootfs");
        let copied = check(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(from)
                .arg(&rootfs)
                .status(),
            "run cp",
        );
        if !copied.success() {
            fail(&format!(
                "cannot copy {} to {}",
                from.display(),
                rootfs.display()
            ));
        }
        Machine {
            dir,
            name: format!(
                "{NAME_PREFIX}{}",
                &molt_host::random_token()[..10].to_ascii_lowercase()
            ),
            binds,
            nspawn: None,
            leader: 0,
            boots: 0,
        }
    }

    /// The container's root filesystem on the test machine.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// A path inside the container, as the test machine sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.rootfs().join(inside.trim_start_matches('/'))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times this machine has booted.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    fn start(&mut self) {
        let console = check(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("console.log")),
            "open the console log",
        );
        let err = check(console.try_clone(), "clone the console log");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["--quiet", "--boot", "--register=no", "--keep-unit"])
            .arg("--directory")
            .arg(self.rootfs())
            .arg(format!("--machine={}", self.name));
        for b in &self.binds {
            cmd.arg(format!("--bind-ro={}", b.display()));
        }
        let child = check(
            cmd.stdin(Stdio::null()).stdout(console).stderr(err).spawn(),
            "start systemd-nspawn (install it with `apt-get install systemd-container`)",
        );
        let nspawn_pid = child.id();
        self.nspawn = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(leader) = child_named(nspawn_pid, "systemd") {
                self.leader = leader;
                let out = self.sh("systemctl is-system-running");
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if state == "running" || state == "degraded" {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = self.nspawn.as_mut().map(Child::try_wait) {
                fail(&format!(
                    "systemd-nspawn exited ({status}) before the machine booted:\n{}",
                    self.console()
                ));
            }
            if Instant::now() > deadline {
                fail(&format!(
                    "the machine did not boot within 60 s:\n{}",
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.boots += 1;
    }

    /// What the container printed on its console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Runs `script` with `/bin/sh -c` inside the container, as root with a clean
    /// environment (as an operator's shell would).
    pub fn sh(&self, script: &str) -> Output {
        check(
            Command::new("nsenter")
                .arg("-t")
                .arg(self.leader.to_string())
                .args([
                    "-a",
                    "env",
                    "-i",
                    PATH,
                    "LANG=C.UTF-8",
                    "/bin/sh",
                    "-c",
                    script,
                ])
                .stdin(Stdio::null())
                .output(),
            "run nsenter",
        )
    }

    /// Like [`Machine::sh`], and the script must succeed; its stdout.
    pub fn run(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.status.success() {
            fail(&format!(
                "`{script}` failed in the machine ({}):\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl is-active <unit>`'s answer.
    pub fn is_active(&self, unit: &str) -> String {
        let out = self.sh(&format!("systemctl is-active {unit}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A unit's property (`systemctl show -p NAME --value`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.run(&format!("systemctl show -p {name} --value {unit}"))
            .trim()
            .to_owned()
    }

    /// The unit's main process, if it has one.
    pub fn main_pid(&self, unit: &str) -> Option<u32> {
        self.property(unit, "MainPID")
            .parse()
            .ok()
            .filter(|p| *p != 0)
    }

    /// Copies a file of the test machine into the container, with `mode`.
    pub fn install_file(&self, from: &Path, inside: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let to = self.path(inside);
        if let Some(parent) = to.parent() {
            check(
                std::fs::create_dir_all(parent),
                "create a directory in the machine",
            );
        }
        check(
            std::fs::copy(from, &to),
            &format!("copy {}", from.display()),
        );
        check(
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)),
            "chmod",
        );
    }

    /// Writes a file inside the container.
    pub fn write(&self, inside: &str, text: &str) {
        let to = self.path(inside);
        if let Some(parent) = to.parent() {
            check(
                std::fs::create_dir_all(parent),
                "create a directory in the machine",
            );
        }
        check(std::fs::write(&to, text), &format!("write {inside}"));
    }

    /// `systemctl poweroff`, and waits for the container to stop (killing it after 60 s).
    pub fn poweroff(&mut self) {
        let _ = self.sh("systemctl poweroff");
        self.wait_stopped(Duration::from_secs(60));
    }

    /// The machine loses power: every process in it is killed at once (SIGKILL to its
    /// systemd, which takes its PID namespace down). What was written stays written.
    pub fn pull_the_plug(&mut self) {
        crate::fixture::kill(self.leader);
        self.wait_stopped(Duration::from_secs(30));
    }

    /// Boots the same root filesystem again (after [`Machine::poweroff`] or
    /// [`Machine::pull_the_plug`]): a reboot, with the files kept.
    pub fn boot_again(&mut self) {
        if self.nspawn.is_some() {
            fail("the machine still runs: power it off first");
        }
        self.start();
    }

    fn wait_stopped(&mut self, limit: Duration) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    crate::fixture::kill(self.leader);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.leader = 0;
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.nspawn.is_some() {
            if std::thread::panicking() {
                eprintln!("--- console of {}\n{}", self.name, self.console());
                let journal = self.sh("journalctl -b --no-pager -o short-monotonic | tail -n 200");
                eprintln!(
                    "--- journal of {} (last 200 lines)\n{}",
                    self.name,
                    String::from_utf8_lossy(&journal.stdout)
                );
            }
            let _ = self.sh("systemctl poweroff");
            self.wait_stopped(Duration::from_secs(20));
        }
    }
}

/// The first child of `parent` whose command name is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
}
