//! A version kept on the host (the last known-good) is checked before it is used again:
//! its files must hash as `.valid` recorded at install, with nothing added, else it is
//! fetched again and verified like any download. And a version is removed `.valid` first,
//! so a kill in the middle never leaves the marker beside a missing `bin/agent`.
//!
//! Real updater and agent processes, real files, a real SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt as _;
use std::process::Output;

use molt_host::state::Outcome;
use molt_schema::Version;
use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo};

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

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", text(o));
}

/// A host that went 1.0.0 → 2.0.0 and keeps 1.0.0 as its last known-good version.
fn host_keeping_v1(repo: &TestRepo) -> TestHost {
    let host = TestHost::new(repo);
    ok(&host.update("1.0.0", &[]), "install 1.0.0");
    ok(&host.update("2.0.0", &[]), "update to 2.0.0");
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert!(host.layout().is_valid(&v("1.0.0")), "1.0.0 is kept");
    host
}

fn repo() -> TestRepo {
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    repo
}

/// Goes back to 1.0.0 and returns the updater's output and whether it downloaded.
fn back_to_v1(host: &TestHost) -> (Output, bool) {
    let out = host.update("1.0.0", &["--allow-downgrade"]);
    ok(&out, "downgrade to 1.0.0");
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    let last = host.history().pop().unwrap();
    assert_eq!(last.result, Outcome::Success);
    (out, last.timings.download_ms.is_some())
}

#[test]
fn an_intact_kept_version_is_reused_without_a_download() {
    let repo = repo();
    let host = host_keeping_v1(&repo);
    let (out, downloaded) = back_to_v1(&host);
    assert!(!downloaded, "an intact 1.0.0 is reused: {}", text(&out));
    assert!(!text(&out).contains("is not reused"), "{}", text(&out));
}

/// Changes a version's directory.
type Tamper = dyn Fn(&std::path::Path);

/// Each way a kept version can differ from what was installed; each gets it fetched again.
#[test]
fn a_kept_version_that_changed_is_fetched_again() {
    let cases: [(&str, &Tamper, &str); 5] = [
        (
            "a byte appended to bin/agent",
            &|dir| {
                use std::io::Write as _;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(dir.join("bin/agent"))
                    .unwrap();
                f.write_all(b"\0").unwrap();
            },
            "bin/agent changed since it was installed",
        ),
        (
            "VERSION rewritten",
            &|dir| std::fs::write(dir.join("VERSION"), b"9.9.9\n").unwrap(),
            "VERSION changed since it was installed",
        ),
        (
            "bin/updater deleted",
            &|dir| std::fs::remove_file(dir.join("bin/updater")).unwrap(),
            "bin/updater is missing",
        ),
        (
            "a library dropped beside the agent",
            &|dir| std::fs::write(dir.join("bin/libpreload.so"), b"\x7fELF").unwrap(),
            "bin/libpreload.so was not installed with the version",
        ),
        (
            "a .valid left empty by an older updater",
            &|dir| std::fs::write(dir.join(".valid"), b"").unwrap(),
            "records no file hashes",
        ),
    ];
    let repo = repo();
    for (what, tamper, expected) in cases {
        let host = host_keeping_v1(&repo);
        let dir = host.layout().version_dir(&v("1.0.0"));
        let agent_before = std::fs::read(dir.join("bin/agent")).unwrap();
        tamper(&dir);
        let (out, downloaded) = back_to_v1(&host);
        let said = text(&out);
        assert!(downloaded, "{what}: 1.0.0 was reused: {said}");
        assert!(
            said.contains("the installed 1.0.0 is not reused") && said.contains(expected),
            "{what}: expected {expected:?} in: {said}"
        );
        assert_eq!(
            std::fs::read(dir.join("bin/agent")).unwrap(),
            agent_before,
            "{what}: the agent is the published one again"
        );
        assert!(!dir.join("bin/libpreload.so").exists(), "{what}");
        molt_host::installed::check(&host.layout(), &v("1.0.0")).unwrap();
    }
}

/// The commit of 2.0.0 → 3.0.0 removes 1.0.0; a SIGKILL between taking its `.valid` away
/// and removing its files leaves a version nothing counts as installed, which the
/// recovery removes.
#[test]
fn a_kill_while_a_version_is_removed_leaves_no_marker_beside_missing_files() {
    let repo = repo();
    repo.publish("3.0.0", Status::Active);
    let host = host_keeping_v1(&repo);
    let out = host
        .update_cmd("3.0.0", &[])
        .env("MOLT_TEST_KILL_AT", "removing_version")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "not killed: {}", text(&out));
    let layout = host.layout();
    let old = layout.version_dir(&v("1.0.0"));
    assert!(!layout.is_valid(&v("1.0.0")), ".valid goes first");
    assert!(
        old.join("bin/agent").is_file(),
        "killed before the files went"
    );
    assert!(layout.current_version().is_some());
    host.assert_versions_whole();

    ok(&host.recover(), "recover");
    assert_eq!(host.assert_healthy(), v("3.0.0"));
    assert!(!old.exists(), "the recovery finished the clean-up");
    assert!(layout.is_valid(&v("2.0.0")), "the last known-good stays");
    let results: Vec<Outcome> = host.history().into_iter().map(|r| r.result).collect();
    assert_eq!(
        results,
        [Outcome::Success, Outcome::Success, Outcome::Success],
        "one record per update, none lost or doubled"
    );
}
