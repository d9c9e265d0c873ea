//! The updater against a repository served over HTTP by a fault-injecting server: each
//! fault either ends in a completed update or a clean failure with v1 untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;

use molt_host::state::Outcome;
use molt_schema::Version;
use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo};
use molt_tests::http_server::{Fault, FileServer, Times};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Setup {
    repo: TestRepo,
    server: FileServer,
    host: TestHost,
    archive_path: String,
}

/// 1.0.0 and 2.0.0 served over HTTP; the host installed 1.0.0 from it.
fn setup() -> Setup {
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    let server = FileServer::start(repo.path()).unwrap();
    let mut host = TestHost::new(&repo);
    host.source = server.base_url();
    let out = host.update("1.0.0", &[]);
    assert!(out.status.success(), "{}", text(&out));
    host.assert_healthy();
    let file = repo.target_file("molt-agent-2.0.0-linux-amd64.tar.gz");
    let rel = file
        .strip_prefix(repo.path())
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    Setup {
        repo,
        server,
        host,
        archive_path: format!("/{rel}"),
    }
}

#[test]
fn connection_reset_mid_body_is_resumed_with_range() {
    let s = setup();
    s.server
        .faults()
        .on_path(&s.archive_path, Fault::ResetAfter(64 * 1024), Times::Once);
    let out = s.host.update("latest", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.host.assert_healthy(), v("2.0.0"));
    let ranged = s
        .server
        .request_log()
        .iter()
        .any(|r| r.path == s.archive_path && r.range.is_some() && r.status == 206);
    assert!(ranged, "the download resumed with a Range request");
}

#[test]
fn range_ignored_restarts_from_zero() {
    let s = setup();
    s.server
        .faults()
        .on_path(&s.archive_path, Fault::ResetAfter(64 * 1024), Times::Once);
    s.server
        .faults()
        .on_path(&s.archive_path, Fault::IgnoreRange, Times::Always);
    let out = s.host.update("latest", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.host.assert_healthy(), v("2.0.0"));
}

#[test]
fn server_errors_are_retried() {
    let s = setup();
    s.server
        .faults()
        .on_path(&s.archive_path, Fault::Status(503), Times::N(2));
    let out = s.host.update("latest", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.host.assert_healthy(), v("2.0.0"));
    assert!(s.server.requests(&s.archive_path) >= 3);
}

/// One 503 or reset on the metadata costs a retry, not the run (before, the host waited
/// out its whole schedule slot).
#[test]
fn a_metadata_failure_is_retried() {
    let s = setup();
    let faults = s.server.faults();
    faults.on_path("/metadata/timestamp.json", Fault::Status(503), Times::Once);
    faults.on_prefix("/metadata/", Fault::ResetAfter(10), Times::Once);
    let out = s.host.update("latest", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.host.assert_healthy(), v("2.0.0"));
    assert_eq!(faults.pending(), 0, "both faults were served");
    let shown = text(&out);
    assert!(shown.contains("retrying"), "{shown}");
    assert!(shown.contains("503"), "{shown}");
}

#[test]
fn truncated_body_is_completed() {
    let s = setup();
    s.server
        .faults()
        .on_path(&s.archive_path, Fault::Truncate(100_000), Times::Once);
    let out = s.host.update("latest", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s.host.assert_healthy(), v("2.0.0"));
}

#[test]
fn a_stall_is_ended_by_the_throughput_floor_and_v1_stays() {
    let s = setup();
    // a stall on every attempt: the floor ends each one, the retries run out
    s.server.faults().on_path(
        &s.archive_path,
        Fault::Stall {
            after_bytes: 32 * 1024,
            duration: std::time::Duration::from_secs(30),
        },
        Times::Always,
    );
    std::fs::write(
        s.host.root.path().join("agent.toml"),
        "[updater]\nmin_throughput = 1048576\ndownload_deadline = \"3s\"\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = s.host.update("latest", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(text(&out).contains("download failed"), "{}", text(&out));
    assert_eq!(s.host.assert_healthy(), v("1.0.0"));
    assert_eq!(s.host.history().pop().unwrap().result, Outcome::Failed);
}

#[test]
fn a_missing_archive_answered_403_fails_cleanly() {
    let s = setup();
    s.server
        .faults()
        .everywhere(Fault::ForbiddenForMissing, Times::Always);
    std::fs::remove_file(s.repo.target_file("molt-agent-2.0.0-linux-amd64.tar.gz")).unwrap();
    let out = s.host.update("latest", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not found") || text(&out).contains("was not found"),
        "{}",
        text(&out)
    );
    assert_eq!(s.host.assert_healthy(), v("1.0.0"));
    assert_eq!(s.host.layout().installed_versions(), vec![v("1.0.0")]);
}

#[test]
fn json_dry_run_status_and_history() {
    let s = setup();
    let out = s.host.update("latest", &["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["result"], "plan");
    assert_eq!(plan["plan"]["to"], "2.0.0");
    assert_eq!(plan["plan"]["reason"], "upgrade");
    assert!(plan["download_size"].as_u64().unwrap() > 0);
    assert_eq!(
        s.host.assert_healthy(),
        v("1.0.0"),
        "a dry run changes nothing"
    );
    let out = s.host.update("latest", &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["result"], "updated");
    assert_eq!(done["record"]["to"], "2.0.0");
    let refused = s.host.update("1.0.0", &["--json"]);
    assert_eq!(refused.status.code(), Some(3));
    let err: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(err["exit_code"], 3);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("please enable allow downgrade")
    );
    let status = s
        .host
        .updater()
        .args(["status", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st["current"], "2.0.0");
    assert_eq!(st["update_in_progress"], false);
    let history = s
        .host
        .updater()
        .args(["history", "-n", "5"])
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&history.stdout);
    assert!(h.contains("1.0.0 -> 2.0.0 success"), "{h}");
}
