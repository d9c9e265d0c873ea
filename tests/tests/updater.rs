//! The updater end to end: the real `updater` binary, real agent processes (the
//! test agent), a signed repository built at test time, real files and signals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;

use molt_host::state::{Outcome, Quarantine};
use molt_schema::Version;
use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo, kill, pid_alive};
use molt_tests::http_server::FileServer;

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A repository with 1.0.0 and 2.0.0, and a host installed at 1.0.0.
fn host_on_v1(repo: &TestRepo) -> TestHost {
    let host = TestHost::new(repo);
    let out = host.update("1.0.0", &[]);
    assert_eq!(code(&out), 0, "first install: {}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    host
}

fn repo_v1_v2() -> TestRepo {
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    repo
}

/// A source typed without its trailing slash, as a new user writes it (`--source
/// file:///srv/molt/us-east-1`), over file:// and over http:// under a path: the metadata and
/// the packages both load. (The packages' URLs were joined onto a base whose last segment
/// `Url::join` drops, so the metadata loaded and the download got a 404.)
#[test]
fn a_source_without_a_trailing_slash_works() {
    let repo = repo_v1_v2();
    let mut host = TestHost::new(&repo);
    host.source = repo.url().trim_end_matches('/').to_owned();
    assert!(!host.source.ends_with('/'));
    let out = host.update("1.0.0", &[]);
    assert_eq!(code(&out), 0, "file:// without a slash: {}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));

    let server = FileServer::start(repo.dir.path()).unwrap();
    host.source = format!("{}repo", server.base_url());
    let out = host.update("2.0.0", &[]);
    assert_eq!(code(&out), 0, "http:// without a slash: {}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

/// One bad byte and a torn last line in `state/history.jsonl` (a crash mid-append, a bad
/// sector): the next update still commits and records itself, and `updater history` and
/// `status` still read the file.
/// A minimal image without a certificate store (no ca-certificates): a `file://` source
/// needs none and works; an `https://` source is refused with what to install, before
/// anything is sent, and the host is untouched.
#[test]
fn a_host_without_ca_certificates_installs_from_a_file_source_and_names_the_fix_for_https() {
    let repo = repo_v1_v2();
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("empty.pem"), "").unwrap();
    let no_roots = |host: &mut TestHost| {
        let file = empty.path().join("empty.pem").display().to_string();
        host.env.push(("SSL_CERT_FILE".into(), file));
        host.env
            .push(("SSL_CERT_DIR".into(), empty.path().display().to_string()));
    };
    let mut host = TestHost::new(&repo);
    no_roots(&mut host);
    let out = host.update("1.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));

    host.source = "https://127.0.0.1:9/repo/".into();
    let out = host.update("2.0.0", &[]);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(!said.contains("retrying"), "not retried: {said}");
    assert!(
        said.contains("this host has no CA certificates to verify https:// servers with: install the ca-certificates package"),
        "{said}"
    );
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn a_damaged_history_file_does_not_stop_updates() {
    use std::io::Write as _;
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let history = host.layout().history();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&history)
        .unwrap();
    f.write_all(b"{\"version\":1,\"id\":\"\xff\xfe garbage\n{\"torn\":")
        .unwrap();
    drop(f);
    let out = host.update("2.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert!(!host.layout().journal().exists(), "the update finished");
    let records = host.history();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1].to, v("2.0.0"));
    for cmd in ["history", "status"] {
        let out = host.updater().arg(cmd).output().unwrap();
        assert_eq!(code(&out), 0, "{cmd}: {}", text(&out));
        assert!(text(&out).contains("2.0.0"), "{cmd}: {}", text(&out));
    }
}

/// `update.lock`, `history.jsonl` and `agent.log` planted as symbolic links out of `state/`,
/// dangling and to an existing file (what the agent's user could do once it runs without
/// root): nothing outside is created or appended to, the update still finishes and records
/// itself, and the links are replaced by molt's own files. (They were followed.)
#[test]
fn links_in_the_state_directory_are_never_followed() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let layout = host.layout();
    let outside = tempfile::tempdir().unwrap();
    let existing = outside.path().join("existing");
    std::fs::write(&existing, b"precious\n").unwrap();
    let files = [layout.lock(), layout.history(), layout.agent_log()];
    for (n, target) in ["2.0.0", "1.0.0"].into_iter().enumerate() {
        for (i, file) in files.iter().enumerate() {
            let _ = std::fs::remove_file(file);
            let pointee = if n == 0 {
                outside.path().join(format!("dangling-{i}"))
            } else {
                existing.clone()
            };
            std::os::unix::fs::symlink(&pointee, file).unwrap();
        }
        let out = host.update(target, &["--allow-downgrade"]);
        assert_eq!(code(&out), 0, "links, round {n}: {}", text(&out));
        assert_eq!(host.assert_healthy(), v(target));
        assert!(
            text(&out).contains("never follows one in its state directory"),
            "{}",
            text(&out)
        );
        for file in &files {
            let meta = std::fs::symlink_metadata(file).unwrap();
            assert!(meta.is_file(), "{} is a file again", file.display());
        }
        let mut names: Vec<_> = std::fs::read_dir(outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["existing"], "nothing was created outside state/");
        assert_eq!(std::fs::read(&existing).unwrap(), b"precious\n");
    }
    let records = host.history();
    assert_eq!(records.last().unwrap().to, v("1.0.0"), "{records:?}");
}

/// Logs that go to a file or a pipe carry no ANSI colour codes (they did: `state/agent.log`
/// and the updater's stderr under a pipe were full of escapes), and `log_format = "json"`
/// makes every record of both programs one JSON object a line.
#[test]
fn logs_are_plain_text_off_a_terminal_and_json_when_asked() {
    let repo = repo_v1_v2();
    let mut host = TestHost::new(&repo);
    host.env.push(("MOLT_LOG".into(), "info".into()));
    let out = host.update("1.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    host.assert_healthy();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escapes in the updater's log: {stderr:?}"
    );
    std::fs::write(
        host.root.path().join("agent.toml"),
        "log_format = \"json\"\n",
    )
    .unwrap();
    let out = host.update("2.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    let records = |text: &str, what: &str| {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{what}: no log lines");
        for line in lines {
            let record: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line:?}"));
            assert!(record["level"].is_string(), "{what}: {line}");
            assert!(record["message"].is_string(), "{what}: {line}");
        }
    };
    records(&String::from_utf8_lossy(&out.stderr), "the updater");
    // the agent: a key of a newer version is warned about, in the format asked for
    let agent = |config: &str| {
        let path = host.root.path().join("agent-check.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(molt_tests::fixture::workspace_bin("agent"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .env_remove("MOLT_LOG_FORMAT")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = agent("[agent]\nfuture_key = 1\n");
    assert!(
        plain.contains("WARN") && plain.contains("future_key"),
        "{plain}"
    );
    assert!(
        !plain.contains('\x1b'),
        "escapes in the agent's log: {plain:?}"
    );
    records(
        &agent("log_format = \"json\"\n[agent]\nfuture_key = 1\n"),
        "the agent",
    );

    // a typo in the value is a config error that names the key and the choices
    std::fs::write(
        host.root.path().join("agent.toml"),
        "log_format = \"jsno\"\n",
    )
    .unwrap();
    let out = host.update("2.0.0", &[]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("use \"text\" or \"json\""),
        "{}",
        text(&out)
    );
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

/// Every file, directory and link under `root`, with contents, as a sorted list (the agent's
/// own output, `agent.log`, aside).
fn tree(root: &std::path::Path) -> Vec<(String, String)> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let kind = e.file_type().unwrap();
            if kind.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                ));
            } else if kind.is_dir() {
                out.push((rel.clone(), "dir".into()));
                walk(base, &path, out);
            } else if !rel.ends_with("agent.log") {
                let bytes = std::fs::read(&path).unwrap();
                out.push((
                    rel,
                    format!(
                        "{} bytes, {:x}",
                        bytes.len(),
                        molt_schema::Sha256::digest(&bytes).as_bytes()[0]
                    ),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// `--dry-run` changes nothing: no lock taken (it answers while an update holds one), no
/// recovery, no datastore commit, no scratch left, the agent untouched; what killed runs
/// left (datastore copies, partial downloads) waits for the next real run, which removes it.
/// (A dry run took the lock, ran recovery, committed the datastore and left copies in
/// `state/tuf/`.)
#[test]
fn a_dry_run_changes_nothing() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let layout = host.layout();
    let pid = host.agent_pid().unwrap();
    // what killed runs leave behind
    let stale = layout.tuf_dir().join(".us-east-1.Ab12Cd");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("timestamp.json"), b"{}").unwrap();
    std::os::unix::fs::symlink(
        ".us-east-1.Ab12Cd",
        layout.tuf_dir().join(".us-east-1.Ab12Cd.link"),
    )
    .unwrap();
    std::fs::create_dir_all(layout.cache_dir()).unwrap();
    let partial = layout
        .cache_dir()
        .join(format!("{}.partial", "ab".repeat(32)));
    std::fs::write(&partial, b"half a download").unwrap();
    let before = tree(host.root.path());

    let held = molt_host::lock::UpdateLock::try_acquire(&layout.lock()).unwrap();
    for run in 0..2 {
        let out = host.update("latest", &["--dry-run"]);
        assert_eq!(code(&out), 0, "run {run}: {}", text(&out));
        assert!(text(&out).contains("2.0.0"), "{}", text(&out));
        assert_eq!(tree(host.root.path()), before, "run {run} changed the host");
        assert_eq!(host.agent_pid(), Some(pid));
    }
    drop(held);

    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert!(!stale.exists(), "a stale datastore copy stays");
    assert!(!layout.tuf_dir().join(".us-east-1.Ab12Cd.link").exists());
    assert!(!partial.exists(), "a stale partial download stays");
}

#[test]
fn first_install_needs_a_trusted_root() {
    let repo = repo_v1_v2();
    let mut host = TestHost::new(&repo);
    host.trusted_root = host.root.path().join("missing-root.json");
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("a first install needs --trusted-root"),
        "{}",
        text(&out)
    );
    assert_eq!(host.current(), None);
}

#[test]
fn v1_to_v2_happy_path() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let old_pid = host.agent_pid().unwrap();
    // the first install put the standalone updater in place, as a real file
    let standalone = host.layout().updater_bin();
    assert!(
        std::fs::symlink_metadata(&standalone)
            .unwrap()
            .file_type()
            .is_file()
    );
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("updated molt-agent 1.0.0 -> 2.0.0"),
        "{}",
        text(&out)
    );
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert!(!pid_alive(old_pid), "the old agent was stopped");
    let last = host.history().pop().unwrap();
    assert_eq!(
        (last.from, last.to, last.result),
        (Some(v("1.0.0")), v("2.0.0"), Outcome::Success)
    );
    assert!(last.timings.agent_downtime_ms.is_some());
    // the last known-good version is kept, the journal is gone
    assert!(host.layout().is_valid(&v("1.0.0")));
    assert!(!host.layout().journal().exists());
    // the same version again: exit 0, nothing changes
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("2.0.0 is already installed"),
        "{}",
        text(&out)
    );
    assert_eq!(host.history().len(), 2);
}

#[test]
fn downgrade_needs_the_flag() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    assert_eq!(code(&host.update("2.0.0", &[])), 0);
    let out = host.update("1.0.0", &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains("Updating molt-agent from 2.0.0 to an older version 1.0.0, please enable allow downgrade to proceed"),
        "{}",
        text(&out)
    );
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    let out = host.update("1.0.0", &["--allow-downgrade"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn unsupported_platform_and_inactive_are_refused() {
    let repo = repo_v1_v2();
    repo.publish("3.0.0", Status::Inactive);
    let host = host_on_v1(&repo);
    let out = host.update("2.0.0", &["--platform", "linux-musl-arm64"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains(
            "molt-agent target version 2.0.0 is unsupported on current platform (linux-musl-arm64)"
        ),
        "{}",
        text(&out)
    );
    let out = host.update("3.0.0", &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("3.0.0 is Inactive"), "{}", text(&out));
    // latest never picks the Inactive 3.0.0
    let out = host.update("latest", &["--dry-run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("to:        2.0.0"), "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"), "dry run changed nothing");
}

fn broken_v2(behaviour: &str, expect_in_reason: &str) {
    let repo = repo_v1_v2();
    let mut host = host_on_v1(&repo);
    host.env
        .push(("MOLT_TEST_AGENT_2_0_0".into(), behaviour.into()));
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 5, "{behaviour}: {}", text(&out));
    assert_eq!(
        host.assert_healthy(),
        v("1.0.0"),
        "{behaviour}: v1 runs again"
    );
    let last = host.history().pop().unwrap();
    assert_eq!(last.result, Outcome::RolledBack, "{behaviour}");
    let reason = last.reason.unwrap();
    assert!(reason.contains(expect_in_reason), "{behaviour}: {reason}");
    // The operator sees why on the terminal too, as the renderer's cause line: the health
    // check's finding that the history records.
    let err = String::from_utf8_lossy(&out.stderr);
    let cause = err
        .lines()
        .find_map(|l| l.strip_prefix("  caused by: "))
        .unwrap_or_else(|| panic!("{behaviour}: no cause in {err}"));
    assert!(
        cause.len() > 10 && reason.ends_with(cause),
        "{behaviour}: {err} / {reason}"
    );
    let q = Quarantine::load(&host.layout().quarantine()).unwrap();
    assert!(
        q.versions().contains(&v("2.0.0")),
        "{behaviour}: quarantined"
    );
    assert!(
        !host.layout().version_dir(&v("2.0.0")).exists(),
        "{behaviour}: failed version removed"
    );
}

#[test]
fn broken_v2_that_exits_at_start_is_rolled_back() {
    broken_v2("exit-at-start", "2.0.0 failed its health check");
}

#[test]
fn broken_v2_that_never_reports_healthy_is_rolled_back() {
    broken_v2("never-healthy", "2.0.0 failed its health check");
}

#[test]
fn broken_v2_that_reports_the_wrong_version_is_rolled_back() {
    broken_v2("wrong-version", "2.0.0 failed its health check");
}

#[test]
fn broken_v2_that_crashes_during_the_soak_is_rolled_back() {
    let repo = repo_v1_v2();
    let mut host = host_on_v1(&repo);
    host.soak = "1s".into();
    host.env
        .push(("MOLT_TEST_AGENT_2_0_0".into(), "crash-in-soak".into()));
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn quarantine_skips_on_latest_and_force_retries() {
    let repo = repo_v1_v2();
    let mut host = host_on_v1(&repo);
    host.env
        .push(("MOLT_TEST_AGENT_2_0_0".into(), "exit-at-start".into()));
    assert_eq!(code(&host.update("latest", &[])), 5);
    host.env.clear();
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("quarantined"), "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    let out = host.update("latest", &["--force"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert!(
        Quarantine::load(&host.layout().quarantine())
            .unwrap()
            .entries
            .is_empty()
    );
}

/// A `quarantine.json` with a bad byte or torn by another tool does not stop updates: it is
/// taken as empty, with a warning, and the next quarantine replaces it. (It failed every run
/// with exit 1 before.)
#[test]
fn a_corrupt_quarantine_does_not_block_updates() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let quarantine = host.layout().quarantine();
    for (n, garbage) in [&b"{\"version\":1,\"entries\":[{\"vers"[..], b"\xff\xfe\x00"]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&quarantine, garbage).unwrap();
        let target = ["2.0.0", "1.0.0"][n];
        let out = host.update(target, &["--allow-downgrade"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(host.assert_healthy(), v(target));
        assert!(
            text(&out).contains("taking the quarantine as empty"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn a_stale_health_file_never_counts() {
    let repo = repo_v1_v2();
    let mut host = host_on_v1(&repo);
    // a health.json that claims 2.0.0 is ready, from some earlier start
    let stale = serde_json::json!({"schema":1,"version":"2.0.0","pid":std::process::id(),"nonce":"old","started_at":"2026-01-01T00:00:00Z","status":"ready"});
    std::fs::write(host.layout().health(), stale.to_string()).unwrap();
    host.env
        .push(("MOLT_TEST_AGENT_2_0_0".into(), "never-healthy".into()));
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn tampered_archive_exits_4_and_changes_nothing() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let file = repo.target_file("molt-agent-2.0.0-linux-amd64.tar.gz");
    let mut bytes = std::fs::read(&file).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert_eq!(host.layout().installed_versions(), vec![v("1.0.0")]);
    assert!(!host.layout().staging_dir(&v("2.0.0")).exists());
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn wrong_region_exits_4() {
    let repo = repo_v1_v2();
    let mut host = host_on_v1(&repo);
    host.region = "eu-west-1".into();
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(
        text(&out).contains("the manifest is for region us-east-1, but this host is in eu-west-1"),
        "{}",
        text(&out)
    );
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn two_updaters_at_once() {
    let repo = repo_v1_v2();
    let mut host = host_on_v1(&repo);
    host.soak = "3s".into();
    let mut first = host
        .update_cmd("latest", &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait until the first one holds the lock (its journal exists)
    molt_tests::fixture::wait_for(std::time::Duration::from_secs(10), || {
        host.layout().journal().exists().then_some(())
    })
    .unwrap();
    let second = host.update("latest", &[]);
    assert_eq!(code(&second), 6, "{}", text(&second));
    assert!(
        text(&second).contains("Another update in progress, try again later"),
        "{}",
        text(&second)
    );
    let rec = host.recover();
    assert_eq!(code(&rec), 0, "{}", text(&rec));
    assert!(
        text(&rec).contains("an update is in progress"),
        "{}",
        text(&rec)
    );
    assert!(first.wait().unwrap().success());
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

#[test]
fn recover_with_nothing_to_do_starts_a_dead_agent() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    kill(host.agent_pid().unwrap());
    let out = host.recover();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("started the agent"), "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn not_enough_disk_space_exits_1_and_changes_nothing() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let cache = host.layout().cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&cache)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let out = host.update("latest", &[]);
    let _ = std::process::Command::new("umount").arg(&cache).status();
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("free at least"), "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    assert_eq!(host.layout().installed_versions(), vec![v("1.0.0")]);
    assert_eq!(
        host.history().pop().unwrap().result,
        molt_host::state::Outcome::Failed
    );
}

#[test]
fn self_update_checks_the_new_updater_keeps_the_previous_and_reexecs() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let standalone = host.layout().updater_bin();
    let original = std::fs::read(&standalone).unwrap();
    // molt-updater 2.0.0 holds a binary that reports another version: it fails its
    // pre-flight, is not installed, and the agent update carries on with this updater.
    let out = host
        .update_cmd_via(&standalone, "latest", &[])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert_eq!(std::fs::read(&standalone).unwrap(), original);
    assert!(!host.layout().updater_previous().exists());
    assert!(text(&out).contains("not self-updating"), "{}", text(&out));
    // ...and quarantined, so no later run fetches it again. (This test's updater reports
    // 0.1.0, so molt-updater 1.0.0, which holds the same binary, is "newer" too: the next
    // run tries that one once, and after it nothing is tried.)
    let quarantined = || -> Vec<molt_schema::Version> {
        molt_host::state::read_json::<molt_host::state::Quarantine>(
            &host.layout().updater_quarantine(),
        )
        .unwrap()
        .unwrap()
        .versions()
        .into_iter()
        .collect()
    };
    assert_eq!(quarantined(), [v("2.0.0")]);
    let run = || {
        let out = host
            .update_cmd_via(&standalone, "latest", &[])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
        text(&out)
    };
    let second = run();
    assert!(
        second.contains("not self-updating to molt-updater 1.0.0"),
        "{second}"
    );
    assert_eq!(quarantined(), [v("1.0.0"), v("2.0.0")]);
    let third = run();
    assert!(!third.contains("not self-updating"), "{third}");
    // molt-updater 3.0.0 is a good one: bin/updater is replaced, the old one kept as
    // bin/updater.previous, and the new one re-exec'd with the same arguments.
    let stand_in = molt_tests::fixture::workspace_bin("test-agent");
    repo.publish_programs("3.0.0", &stand_in, &stand_in);
    let marker = host.root.path().join("reexec-marker");
    let out = host
        .update_cmd_via(&standalone, "latest", &[])
        .env("MOLT_TEST_REEXEC_MARKER", &marker)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        std::fs::read(&standalone).unwrap(),
        std::fs::read(&stand_in).unwrap()
    );
    assert_eq!(
        std::fs::read(host.layout().updater_previous()).unwrap(),
        original
    );
    let recorded = std::fs::read_to_string(&marker).unwrap();
    assert!(recorded.starts_with("reexec=1 args=--root"), "{recorded}");
    assert!(recorded.contains("--target-version latest"), "{recorded}");
    // the re-exec'd updater is a stand-in that only recorded its start: 2.0.0 still runs
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    // --dry-run never self-updates, and an updater not running as bin/updater never does
    std::fs::write(&standalone, &original).unwrap();
    let out = host
        .update_cmd_via(&standalone, "latest", &["--dry-run"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(std::fs::read(&standalone).unwrap(), original);
}

/// A signed molt-updater whose `--version` hangs (it never returns, and holds its output
/// open): the pre-flight kills it after 10 s, quarantines it, and the agent update carries on
/// with the running updater; the lock is free for the next run, which does not try it again.
/// (The pre-flight had no limit: the run, and the lock, waited for ever.)
#[test]
fn a_new_updater_that_hangs_is_killed_and_quarantined() {
    use std::os::unix::fs::PermissionsExt as _;
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let standalone = host.layout().updater_bin();
    let original = std::fs::read(&standalone).unwrap();
    let hangs = host.root.path().join("hanging-updater");
    std::fs::write(&hangs, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hangs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = molt_tests::fixture::workspace_bin("test-agent");
    repo.publish_programs("3.0.0", &agent, &hangs);
    let started = std::time::Instant::now();
    let out = host
        .update_cmd_via(&standalone, "3.0.0", &[])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    assert!(
        text(&out).contains("not self-updating to molt-updater 3.0.0")
            && text(&out).contains("did not finish within 10s"),
        "{}",
        text(&out)
    );
    assert_eq!(host.assert_healthy(), v("3.0.0"));
    assert_eq!(std::fs::read(&standalone).unwrap(), original);
    let quarantine: molt_host::state::Quarantine =
        molt_host::state::read_json(&host.layout().updater_quarantine())
            .unwrap()
            .unwrap();
    assert!(quarantine.versions().contains(&v("3.0.0")));
    // the next run takes the lock at once and does not try the hung updater again
    let out = host
        .update_cmd_via(&standalone, "latest", &[])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(!text(&out).contains("molt-updater 3.0.0"), "{}", text(&out));
}

#[test]
fn self_update_reexecs_a_new_updater_that_takes_the_lock_and_finishes() {
    let repo = repo_v1_v2();
    let host = host_on_v1(&repo);
    let standalone = host.layout().updater_bin();
    // The "new updater" 3.0.0 is a script that reports 3.0.0 and otherwise runs the real
    // updater binary with the same arguments: the re-exec'd process is a real updater
    // that must take the lock again and carry the agent update through.
    let real = molt_tests::fixture::workspace_bin("updater");
    let script = host.root.path().join("new-updater.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'updater 3.0.0'; exit 0; fi\n\
             [ \"$MOLT_UPDATER_REEXEC\" = 1 ] || exit 99\nexec '{}' \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    repo.publish_programs(
        "3.0.0",
        &molt_tests::fixture::workspace_bin("test-agent"),
        &script,
    );
    let out = host
        .update_cmd_via(&standalone, "latest", &[])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        std::fs::read(&standalone).unwrap(),
        std::fs::read(&script).unwrap()
    );
    assert!(host.layout().updater_previous().exists());
    // the re-exec'd updater held the lock and finished the update to 3.0.0
    assert_eq!(host.assert_healthy(), v("3.0.0"));
    let last = host.history().pop().unwrap();
    assert_eq!(
        (last.from, last.to, last.result),
        (Some(v("1.0.0")), v("3.0.0"), Outcome::Success)
    );
}
