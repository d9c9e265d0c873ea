//! `scripts/install.sh`, run with bash against a signed repository on disk: the first
//! updater from a local file or from a loopback URL with its sha256 (a bare binary or the
//! molt-updater package), a wrong or missing sha256 refused before anything runs, the
//! config written once and then kept, and systemd mode with the unit files and a fake
//! `systemctl` that runs the installed units' commands. The real `agent` and `updater`
//! binaries are installed and run; every agent started is killed at the end.
//!
//! A first install soaks the new agent for the updater's default 30 s (the config that
//! install.sh writes sets no soak), so the tests that install through a written config
//! take about half a minute each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use molt_host::HostLayout;
use molt_host::config::{Config, ServiceKind};
use molt_host::schedule::Schedule;
use molt_host::state::{self, Health, HealthStatus};
use molt_schema::{Platform, Sha256, Version};
use molt_tests::fixture::{TestRepo, kill, pid_alive, wait_for, workspace_bin};
use molt_tests::http_server::FileServer;

const REGION: &str = "us-east-1";

fn install_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/install.sh")
        .canonicalize()
        .unwrap()
}

/// The version the workspace's `agent --version` prints; the release is published as it,
/// since the updater's pre-flight requires the agent to print the version it installs.
fn version() -> Version {
    molt_host::build::version().parse().unwrap()
}

/// A repository in `REGION` with one release of the real agent and updater.
fn release() -> TestRepo {
    let repo = TestRepo::new(REGION);
    repo.publish_programs(
        &version().to_string(),
        &workspace_bin("agent"),
        &workspace_bin("updater"),
    );
    repo
}

fn platform() -> Platform {
    Platform::detect().unwrap_or(Platform::LinuxAmd64)
}

/// The published molt-updater package (`bin/updater`, `VERSION`).
fn updater_package(repo: &TestRepo) -> PathBuf {
    let v = version();
    repo.target_file(&format!("molt-updater-{v}-{}.tar.gz", platform()))
}

fn sha256_of(path: &Path) -> String {
    Sha256::digest(&std::fs::read(path).unwrap()).to_string()
}

fn text(o: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A host in a temporary directory: `root/`, `etc/agent.toml`, `systemd/` for unit files,
/// `fake/` for a fake systemctl and its records, `tmp/` as TMPDIR. Dropping it kills the
/// agents it started (the pid file of direct mode, the fake systemd's main pid).
struct Host {
    dir: tempfile::TempDir,
    /// Prepended to PATH for the script.
    path_prefix: Option<PathBuf>,
}

impl Host {
    fn new() -> Host {
        // Under the target directory, like the other end-to-end tests' hosts.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        Host {
            dir,
            path_prefix: None,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn layout(&self) -> HostLayout {
        HostLayout::new(self.root())
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("etc").join("agent.toml")
    }

    fn systemd_dir(&self) -> PathBuf {
        self.dir.path().join("systemd")
    }

    fn fake_dir(&self) -> PathBuf {
        self.dir.path().join("fake")
    }

    /// `bash scripts/install.sh` with this host's root and config, `repo`'s source and
    /// trusted root, a harmless schedule, and `extra` arguments. The environment is clean:
    /// no IMDS, no AWS credentials, no proxies, no MOLT_* settings.
    fn install(&self, repo: &TestRepo, extra: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(install_sh())
            .args(["--region", REGION, "--source", &repo.url()])
            .arg("--trusted-root")
            .arg(repo.trusted_root())
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.config())
            .args(["--schedule", "rate(14 days)"])
            .args(extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env("TMPDIR", self.dir.path().join("tmp"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-credentials"),
            )
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-config"))
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1");
        for k in [
            "MOLT_CONFIG",
            "MOLT_ROOT",
            "MOLT_REGION",
            "MOLT_SOURCE",
            "MOLT_BUCKET",
            "MOLT_TRUSTED_ROOT",
            "MOLT_PLATFORM",
            "MOLT_HEALTH_NONCE",
            "MOLT_TEST_KILL_AT",
            "MOLT_LOG",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            c.env_remove(k);
        }
        if let Some(prefix) = &self.path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", prefix.display()));
        }
        c
    }

    fn run(&self, repo: &TestRepo, extra: &[&str]) -> Output {
        self.install(repo, extra).output().unwrap()
    }

    fn health(&self) -> Option<Health> {
        state::read_json(&self.layout().health()).ok().flatten()
    }

    fn pid_file(&self, path: &Path) -> Option<u32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// The agent the install left running: health.json ready, of `current`'s version,
    /// naming a live process that `pid_file` names too.
    fn assert_agent_runs(&self, pid_file: &Path) -> u32 {
        let current = self.layout().current_version().expect("current is set");
        let health = wait_for(Duration::from_secs(10), || {
            let h = self.health()?;
            (Some(h.pid) == self.pid_file(pid_file)).then_some(h)
        })
        .unwrap_or_else(|| {
            panic!(
                "no health.json names the agent in {}; health: {:?}",
                pid_file.display(),
                self.health()
            )
        });
        assert!(pid_alive(health.pid), "agent {} is not running", health.pid);
        assert_eq!(health.version, current);
        assert_eq!(health.status, HealthStatus::Ready);
        let exe = std::fs::read_link(format!("/proc/{}/exe", health.pid)).unwrap();
        assert_eq!(
            exe,
            self.layout()
                .version_dir(&current)
                .canonicalize()
                .unwrap()
                .join("bin/agent"),
            "the agent runs from the installed version"
        );
        health.pid
    }

    /// Nothing of molt exists on this host.
    fn assert_nothing_installed(&self) {
        assert!(
            self.layout().current_link().symlink_metadata().is_err(),
            "no current"
        );
        assert!(!self.layout().updater_bin().exists(), "no bin/updater");
        assert!(!self.layout().health().exists(), "no agent ran");
        assert!(!self.config().exists(), "no config was written");
        // and the script cleaned up its own temporary directory
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("tmp"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "install.sh left {left:?}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for pid_file in [self.layout().agent_pid(), self.fake_dir().join("main.pid")] {
            if let Some(pid) = self.pid_file(&pid_file)
                && pid_alive(pid)
            {
                kill(pid);
            }
        }
    }
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

fn write_script(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    settle_executable(path);
    path.to_owned()
}

#[test]
fn direct_mode_from_a_local_updater_file() {
    let repo = release();
    let host = Host::new();
    let updater = workspace_bin("updater");
    let out = host
        .install(&repo, &["--service", "direct"])
        .arg("--updater-file")
        .arg(&updater)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("wrote {}", host.config().display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "installed; the agent runs from {}/current",
            host.root().display()
        )),
        "{stdout}"
    );

    // current, and the standalone updater as a real file
    let layout = host.layout();
    assert_eq!(layout.current_version(), Some(version()));
    let meta = layout.updater_bin().symlink_metadata().unwrap();
    assert!(meta.file_type().is_file(), "bin/updater is a real file");
    assert_eq!(meta.permissions().mode() & 0o111, 0o111, "and executable");
    assert_eq!(
        std::fs::read(layout.updater_bin()).unwrap(),
        std::fs::read(&updater).unwrap()
    );

    // the config: the given settings, strict-parsed as both binaries read it
    let config = Config::load(&host.config()).unwrap();
    let config_dir = host.config().parent().unwrap().to_owned();
    assert_eq!(config.root.as_deref(), Some(host.root().as_path()));
    assert_eq!(config.region, Some(REGION.parse().unwrap()));
    assert_eq!(
        config.source.as_ref().map(|t| t.as_str().to_owned()),
        Some(repo.url())
    );
    assert_eq!(config.bucket, None);
    assert_eq!(
        config.trusted_root.as_deref(),
        Some(config_dir.join("root.json").as_path())
    );
    assert_eq!(
        std::fs::read(config_dir.join("root.json")).unwrap(),
        std::fs::read(repo.trusted_root()).unwrap(),
        "the trusted root is copied beside the config"
    );
    assert_eq!(config.updater.service, Some(ServiceKind::Direct));
    assert_eq!(
        config.agent.schedule,
        Some(Schedule::Rate(Duration::from_secs(14 * 86_400)))
    );

    // the real agent runs, started detached by the updater
    let pid = host.assert_agent_runs(&layout.agent_pid());
    // the script's closing `agent status` read the same config
    assert!(stdout.contains(REGION), "{stdout}");

    // a second run keeps the config and changes nothing: already on the version
    let before = std::fs::read(host.config()).unwrap();
    let out = host
        .install(&repo, &["--service", "direct"])
        .arg("--updater-file")
        .arg(&updater)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(host.config()).unwrap(), before);
    assert_eq!(host.assert_agent_runs(&layout.agent_pid()), pid);
}

#[test]
fn updater_package_from_a_url_with_its_sha256() {
    let repo = release();
    let host = Host::new();
    let served = tempfile::tempdir().unwrap();
    let package = updater_package(&repo);
    std::fs::copy(&package, served.path().join("molt-updater.tar.gz")).unwrap();
    let server = FileServer::start(served.path()).unwrap();
    let url = server.url("molt-updater.tar.gz");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // upper case hex is accepted too
    let sha = sha256_of(&package).to_uppercase();

    let out = host.run(
        &repo,
        &[
            "--service",
            "direct",
            "--updater-url",
            &url,
            "--updater-sha256",
            &sha,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("updater sha256 verified: {}", sha.to_lowercase())),
        "{stdout}"
    );
    assert_eq!(server.requests("/molt-updater.tar.gz"), 1);

    let layout = host.layout();
    assert_eq!(layout.current_version(), Some(version()));
    // the package's bin/updater did the install, and placed the same program
    assert!(
        layout
            .updater_bin()
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(
        std::fs::read(layout.updater_bin()).unwrap(),
        std::fs::read(workspace_bin("updater")).unwrap()
    );
    host.assert_agent_runs(&layout.agent_pid());
}

#[test]
fn a_wrong_sha256_installs_and_runs_nothing() {
    let repo = release();
    let host = Host::new();
    // A tampered "updater" that leaves a mark if anything ever runs it.
    let served = tempfile::tempdir().unwrap();
    let marker = host.dir.path().join("tampered-updater-ran");
    std::fs::write(
        served.path().join("updater"),
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .unwrap();
    let server = FileServer::start(served.path()).unwrap();
    let genuine = sha256_of(&workspace_bin("updater"));
    let tampered = sha256_of(&served.path().join("updater"));

    let out = host.run(
        &repo,
        &[
            "--service",
            "direct",
            "--updater-url",
            &server.url("updater"),
            "--updater-sha256",
            &genuine,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&tampered) && stderr.contains(&genuine),
        "both hashes are named: {stderr}"
    );
    assert!(stderr.contains("nothing was installed"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    assert_eq!(server.requests("/updater"), 1, "it was downloaded");
    assert!(!marker.exists(), "the unverified updater ran");
    host.assert_nothing_installed();
    assert!(!host.root().exists(), "the root was not even created");

    // the same with a local file
    let out = host
        .install(
            &repo,
            &["--service", "direct", "--updater-sha256", &genuine],
        )
        .arg("--updater-file")
        .arg(served.path().join("updater"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&tampered),
        "{}",
        text(&out)
    );
    assert!(!marker.exists(), "the unverified updater ran");
    host.assert_nothing_installed();
}

#[test]
fn a_url_without_sha256_is_refused_before_any_download() {
    let repo = release();
    let host = Host::new();
    let served = tempfile::tempdir().unwrap();
    std::fs::copy(
        updater_package(&repo),
        served.path().join("molt-updater.tar.gz"),
    )
    .unwrap();
    let server = FileServer::start(served.path()).unwrap();

    let out = host.run(
        &repo,
        &[
            "--service",
            "direct",
            "--updater-url",
            &server.url("molt-updater.tar.gz"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--updater-url needs --updater-sha256"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("downloading"),
        "{}",
        text(&out)
    );
    assert_eq!(server.total_requests(), 0, "nothing was downloaded");
    host.assert_nothing_installed();

    // a malformed sha256 is refused the same way
    let out = host.run(
        &repo,
        &[
            "--service",
            "direct",
            "--updater-url",
            &server.url("molt-updater.tar.gz"),
            "--updater-sha256",
            "abc123",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("64 hex digits"),
        "{}",
        text(&out)
    );
    assert_eq!(server.total_requests(), 0, "nothing was downloaded");
    host.assert_nothing_installed();
}

/// A fake `systemctl` that records every call in `<fake>/calls.log`, keeps the manager's
/// environment in `<fake>/env`, and for `start molt-agent` does what systemd would with the
/// installed `molt-agent.service`: its `Environment=` lines, its `ExecStartPre=-` (skipped
/// when the program is missing, as the `-` tells systemd), then its `ExecStart=` in the
/// background, the main pid in `<fake>/main.pid`. Modelled on tests/tests/service.rs.
fn fake_systemctl(fake: &Path, units: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
dir='{fake}'
units='{units}'
[ "$1" = --version ] && {{ echo "systemd 999 (fake)"; exit 0; }}
echo "$*" >> "$dir/calls.log"
alive() {{
    [ -s "$dir/main.pid" ] || return 1
    pid=$(cat "$dir/main.pid")
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ]
}}
agent_unit() {{
    case "$1" in
    molt-agent | molt-agent.service) ;;
    *) echo "fake systemctl: unexpected unit $1" >&2; exit 1 ;;
    esac
    unit="$units/molt-agent.service"
    [ -f "$unit" ] || {{ echo "Unit molt-agent.service not found." >&2; exit 5; }}
}}
case "$1" in
daemon-reload) ;;
enable)
    shift
    for u in "$@"; do
        [ -f "$units/$u" ] || {{ echo "Failed to enable unit: Unit file $u does not exist." >&2; exit 1; }}
    done ;;
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
    case "$2" in
    molt-recover.timer)
        [ -f "$units/molt-recover.timer" ] || {{ echo "Unit molt-recover.timer not found." >&2; exit 5; }}
        exit 0 ;;
    esac
    agent_unit "$2"
    alive && exit 0
    sed -n 's/^Environment=//p' "$unit" > "$dir/unit.env"
    pre=$(sed -n 's/^ExecStartPre=+\{{0,1\}}-//p' "$unit" | sed 's/[$][$]/$/g')
    start=$(sed -n 's/^ExecStart=//p' "$unit")
    (
        set -a
        [ -f "$dir/env" ] && . "$dir/env"
        . "$dir/unit.env"
        set +a
        if [ -n "$pre" ]; then
            eval "$pre" || true
        fi
        exec $start
    ) < /dev/null >> "$dir/agent.log" 2>&1 &
    echo $! > "$dir/main.pid" ;;
stop)
    agent_unit "$2"
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
        fake = fake.display(),
        units = units.display()
    );
    write_script(&fake.join("bin").join("systemctl"), &script)
}

fn calls(fake: &Path) -> Vec<String> {
    let mut calls: Vec<String> = std::fs::read_to_string(fake.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    calls.dedup();
    calls
}

fn position(calls: &[String], call: &str) -> usize {
    calls
        .iter()
        .position(|c| c == call)
        .unwrap_or_else(|| panic!("systemctl never saw {call:?}: {calls:?}"))
}

#[test]
fn systemd_mode_installs_the_units_and_starts_through_systemctl() {
    let repo = release();
    let mut host = Host::new();
    let fake = host.fake_dir();
    fake_systemctl(&fake, &host.systemd_dir());
    host.path_prefix = Some(fake.join("bin"));

    let out = host
        .install(&repo, &["--service", "systemd", "--agent-user", "root"])
        .arg("--systemd-dir")
        .arg(host.systemd_dir())
        .arg("--updater-file")
        .arg(workspace_bin("updater"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n--- agent.log\n{}",
        text(&out),
        std::fs::read_to_string(fake.join("agent.log")).unwrap_or_default()
    );

    // the three units, with this host's root and config
    let root = host.root().display().to_string();
    let config = host.config().display().to_string();
    let unit = |name: &str| std::fs::read_to_string(host.systemd_dir().join(name)).unwrap();
    let lines = |text: &str, key: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    let agent = unit("molt-agent.service");
    let chain = format!(
        "/bin/sh -c 'for u in {root}/bin/updater {root}/bin/updater.previous {root}/current/bin/updater; do case \"$$(timeout 10 \"$$u\" --version 2>/dev/null)\" in \"updater \"[0-9]*) exec \"$$u\" recover;; esac; done; echo \"no updater under {root} runs\" >&2; exit 1'"
    );
    assert_eq!(
        lines(&agent, "ExecStartPre"),
        [
            format!("ExecStartPre=+/usr/bin/install -d -o root -g root -m 0755 {root}/agent"),
            format!("ExecStartPre=+-{chain}")
        ]
    );
    // The agent's user, here the one running the tests (no user is created on this machine;
    // the systemd bed installs with the default, molt).
    assert_eq!(lines(&agent, "User"), ["User=root"]);
    assert_eq!(lines(&agent, "Group"), ["Group=root"]);
    assert!(host.root().join("agent/requests").is_dir());
    assert_eq!(
        lines(&agent, "ExecStart"),
        [format!("ExecStart={root}/current/bin/agent run")]
    );
    assert_eq!(
        lines(&agent, "Environment"),
        [
            format!("Environment=MOLT_ROOT={root}"),
            format!("Environment=MOLT_CONFIG={config}"),
        ]
    );
    let recover = unit("molt-recover.service");
    assert_eq!(lines(&recover, "ExecStart"), [format!("ExecStart={chain}")]);
    assert_eq!(
        lines(&recover, "Environment"),
        [
            format!("Environment=MOLT_ROOT={root}"),
            format!("Environment=MOLT_CONFIG={config}"),
        ]
    );
    let timer = unit("molt-recover.timer");
    assert_eq!(
        timer,
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/deploy/molt-recover.timer")
        )
        .unwrap(),
        "the timer names no path"
    );
    for text in [&agent, &recover, &timer] {
        assert!(
            !text.contains("/opt/molt") && !text.contains("/etc/molt"),
            "{text}"
        );
    }

    // the config asks for systemd
    let written = Config::load(&host.config()).unwrap();
    assert_eq!(written.updater.service, Some(ServiceKind::Systemd));

    // systemctl: units loaded, the updater started the agent, then enable and the timer
    let calls = calls(&fake);
    assert_eq!(calls.first().map(String::as_str), Some("daemon-reload"));
    let reload = position(&calls, "daemon-reload");
    let start = position(&calls, "start molt-agent");
    let enable = position(
        &calls,
        "enable molt-agent.service molt-recover.timer molt-update.path",
    );
    let timer_start = position(&calls, "start molt-recover.timer molt-update.path");
    assert!(
        reload < start && start < enable && enable < timer_start,
        "{calls:?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("start molt-recover.timer molt-update.path"),
        "{calls:?}"
    );
    assert!(
        calls[..start]
            .iter()
            .any(|c| c.starts_with("set-environment MOLT_HEALTH_NONCE=")),
        "the nonce is passed through the manager: {calls:?}"
    );

    // the agent runs from the unit's command, with the unit's environment
    let layout = host.layout();
    assert_eq!(layout.current_version(), Some(version()));
    assert!(
        layout
            .updater_bin()
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_file()
    );
    let pid = host.assert_agent_runs(&fake.join("main.pid"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(
        environ.contains(&format!("MOLT_CONFIG={config}").as_bytes()),
        "the agent has the unit's MOLT_CONFIG"
    );
    assert!(environ.contains(&format!("MOLT_ROOT={root}").as_bytes()));
    assert!(
        !layout.agent_pid().exists(),
        "systemd mode keeps no pid file"
    );
    // The chain, run as systemd runs it (`$$` is a `$`): with bin/updater broken it recovers
    // through the next updater, which repairs bin/updater.
    let bin = host.layout().updater_bin();
    let good = std::fs::read(&bin).unwrap();
    for broken in [&b""[..], b"#!/bin/sh\nexit 3\n", b"\x7fELF truncated"] {
        std::fs::write(&bin, broken).unwrap();
        let script = chain
            .strip_prefix("/bin/sh -c '")
            .and_then(|c| c.strip_suffix('\''))
            .unwrap()
            .replace("$$", "$");
        std::fs::copy(workspace_bin("updater"), host.layout().updater_previous()).unwrap();
        let out = Command::new("/bin/sh")
            .args(["-c", &script])
            .env("MOLT_ROOT", host.root())
            .env("MOLT_CONFIG", host.config())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    fake.join("bin").display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{broken:?}: {}", text(&out));
        assert!(
            text(&out).contains("replaced it with this updater"),
            "{broken:?}: {}",
            text(&out)
        );
        assert!(
            molt_host::process::runs_as_updater(&bin).is_ok(),
            "{broken:?}"
        );
        assert_eq!(std::fs::read(&bin).unwrap(), good, "{broken:?}");
    }
}

#[test]
fn an_existing_config_is_kept_untouched() {
    let repo = release();
    let host = Host::new();
    let config_dir = host.config().parent().unwrap().to_owned();
    std::fs::create_dir_all(&config_dir).unwrap();
    // The operator's own config, with keys the script would not write (and a short soak,
    // which also keeps this test quick).
    let existing = format!(
        "# hand-written\nroot = \"{root}\"\nregion = \"{REGION}\"\nsource = \"{source}\"\n\
         trusted_root = \"{trusted}\"\n\n[updater]\nservice = \"direct\"\nsoak = \"1s\"\n\n\
         [agent]\nschedule = \"cron(0 3 * * sat)\"\njitter = \"2h\"\n",
        root = host.root().display(),
        source = repo.url(),
        trusted = config_dir.join("root.json").display(),
    );
    std::fs::write(host.config(), &existing).unwrap();
    let mtime = std::fs::metadata(host.config())
        .unwrap()
        .modified()
        .unwrap();

    let out = host
        .install(&repo, &["--service", "direct"])
        .arg("--updater-file")
        .arg(workspace_bin("updater"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "keeping the existing config {}",
            host.config().display()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("wrote "), "{stdout}");
    assert_eq!(std::fs::read_to_string(host.config()).unwrap(), existing);
    assert_eq!(
        std::fs::metadata(host.config())
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    assert!(
        !config_dir.join("agent.toml.tmp").exists(),
        "no half-written config is left"
    );
    assert_eq!(host.layout().current_version(), Some(version()));
    host.assert_agent_runs(&host.layout().agent_pid());
}

#[test]
fn relative_paths_and_a_trusted_root_already_in_place() {
    // An operator who has put root.json beside the config already passes that very file,
    // with paths relative to where they stand. The first install asks for a version the
    // repository does not have, so it fails fast, once the config is written.
    let repo = release();
    let host = Host::new();
    let config_dir = host.config().parent().unwrap().to_owned();
    std::fs::create_dir_all(&config_dir).unwrap();
    let in_place = config_dir.join("root.json");
    std::fs::copy(repo.trusted_root(), &in_place).unwrap();
    let out = host
        .install(
            &repo,
            &[
                "--trusted-root",
                "etc/root.json",
                "--root",
                "root",
                "--config",
                "etc/agent.toml",
                "--service",
                "direct",
                "--target-version",
                "9.9.9",
            ],
        )
        .arg("--updater-file")
        .arg(workspace_bin("updater"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the first install failed"), "{stderr}");
    assert!(stderr.contains("9.9.9"), "the updater says why: {stderr}");
    assert_eq!(
        std::fs::read(&in_place).unwrap(),
        std::fs::read(repo.trusted_root()).unwrap(),
        "the trusted root is intact"
    );

    // the config names absolute paths: the agent and systemd read it from elsewhere
    let config = Config::load(&host.config()).unwrap();
    assert_eq!(config.root.as_deref(), Some(host.root().as_path()));
    assert_eq!(config.trusted_root.as_deref(), Some(in_place.as_path()));
    assert!(host.layout().current_link().symlink_metadata().is_err());
    assert!(!host.layout().health().exists(), "no agent ran");
}
