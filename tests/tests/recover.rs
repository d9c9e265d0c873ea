//! `updater recover` end to end (SPEC §6, "Recovery"): the real `updater` binary, real agent
//! processes in direct mode, real SIGKILLs. Each test damages a host the way a crash, a
//! kill or an operator's mistake does, runs `updater recover`, and checks what an operator
//! sees: the exit code, the message, which agent process runs, where `current` points, the
//! history records and the journal files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use molt_host::state::{HistoryRecord, Outcome, Quarantine};
use molt_schema::Version;
use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo, kill, pid_alive, wait_for};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

/// `updater recover` as the systemd timer runs it, with a short soak for the restored
/// agent's health check (the default is 30 s, capped at 5 s in recovery).
fn recover(host: &TestHost) -> Output {
    host.updater()
        .args(["--soak", "300ms", "--health-timeout", "5s"])
        .args(["recover", "--service", "direct"])
        .output()
        .unwrap()
}

fn repo_with(versions: &[&str]) -> TestRepo {
    let repo = TestRepo::new("us-east-1");
    for version in versions {
        repo.publish(version, Status::Active);
    }
    repo
}

fn update_ok(host: &TestHost, target: &str, extra: &[&str]) {
    let out = host.update(target, extra);
    assert_eq!(code(&out), 0, "update to {target}: {}", text(&out));
    assert_eq!(
        host.assert_healthy(),
        v(target),
        "after the update to {target}"
    );
}

/// A host installed at 1.0.0 and updated to 2.0.0: both versions are installed, and
/// history's last good version is 2.0.0.
fn host_v1_then_v2(repo: &TestRepo) -> TestHost {
    let host = TestHost::new(repo);
    update_ok(&host, "1.0.0", &[]);
    update_ok(&host, "2.0.0", &[]);
    assert!(host.layout().is_valid(&v("1.0.0")));
    assert!(host.layout().is_valid(&v("2.0.0")));
    host
}

/// SIGKILLs the running agent and waits until it is gone; returns its pid.
fn stop_agent(host: &TestHost) -> u32 {
    let pid = host.agent_pid().expect("an agent runs");
    kill(pid);
    wait_for(Duration::from_secs(5), || (!pid_alive(pid)).then_some(()))
        .unwrap_or_else(|| panic!("agent {pid} did not die"));
    assert_eq!(host.agent_pid(), None);
    pid
}

/// The target `current` names, whether or not it exists.
fn current_target(host: &TestHost) -> Option<String> {
    std::fs::read_link(host.layout().current_link())
        .ok()
        .map(|p| p.display().to_string())
}

/// The step the journal records, if there is a journal that parses.
fn journal_step(host: &TestHost) -> Option<String> {
    host.journal_field("step")
}

fn last_record(host: &TestHost) -> HistoryRecord {
    host.history().pop().expect("a history record")
}

/// Runs an update that SIGKILLs itself at `checkpoint` (the `test-hooks` kill point).
fn update_killed_at(host: &TestHost, target: &str, checkpoint: &str) {
    let out = host
        .update_cmd(target, &[])
        .env("MOLT_TEST_KILL_AT", checkpoint)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the updater was not killed at {checkpoint}: {:?}: {}",
        out.status,
        text(&out)
    );
}

/// Starts an update to `target` with a long soak and SIGKILLs the updater once the new
/// agent reported healthy (the journal says `switched`). Returns the new agent's pid, which
/// keeps running (it was started in a session of its own).
fn update_killed_in_soak(host: &mut TestHost, target: &str) -> u32 {
    let soak = std::mem::replace(&mut host.soak, "60s".into());
    let mut child = host
        .update_cmd(target, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    host.soak = soak;
    let pid = wait_for(Duration::from_secs(30), || {
        host.health()
            .filter(|h| h.version == v(target) && pid_alive(h.pid))
            .map(|h| h.pid)
    })
    .unwrap_or_else(|| panic!("the agent of {target} never reported healthy"));
    assert_eq!(journal_step(host).as_deref(), Some("switched"));
    kill(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(pid_alive(pid), "the new agent outlives the updater");
    pid
}

/// Copies `versions/<version>` of `donor` (installed there by the updater, `.valid` and all)
/// into `host`: a version left installed beside the others.
fn copy_version(donor: &TestHost, host: &TestHost, version: &str) {
    let src = donor.layout().version_dir(&v(version));
    assert!(
        donor.layout().is_valid(&v(version)),
        "{version} on the donor"
    );
    copy_tree(&src, &host.layout().version_dir(&v(version)));
    assert!(host.layout().is_valid(&v(version)));
}

fn copy_tree(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. `current` missing or dangling while the agent is stopped

/// `current` deleted while the agent is down: recover points it at the last good version
/// in history (1.0.0, after a downgrade: not the newest installed, 2.0.0) and starts a
/// healthy agent of it; nothing is recorded as an update.
#[test]
fn a_deleted_current_is_repaired_to_the_last_good_version() {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let host = host_v1_then_v2(&repo);
    update_ok(&host, "1.0.0", &["--allow-downgrade"]);
    assert!(host.layout().is_valid(&v("2.0.0")), "2.0.0 is still kept");
    let records = host.history().len();
    let old = stop_agent(&host);
    std::fs::remove_file(host.layout().current_link()).unwrap();

    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "current named no valid version; pointed it at 1.0.0, the last good version installed, and started the agent"
        ),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("current named no valid version; pointed it at 1.0.0"),
        "the warning: {}",
        text(&out)
    );
    assert_eq!(current_target(&host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    assert_ne!(host.agent_pid(), Some(old));
    assert_eq!(host.history().len(), records, "no update was recorded");
    assert!(!host.layout().journal().exists());

    // Run again: the host is whole, nothing to do.
    let pid = host.agent_pid().unwrap();
    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "nothing to recover", "{}", text(&out));
    assert_eq!(
        host.agent_pid(),
        Some(pid),
        "the running agent was left alone"
    );
}

/// `current` points at a version directory that was removed (by hand, while the agent was
/// down): recover points it at the version still installed and valid, and starts it.
/// `current` deleted while the agent runs: recover points it at the version the running
/// agent's program is from and leaves that agent alone (before, it said "nothing to recover" and
/// left `current` missing, so the next start would have had nothing to run).
#[test]
fn a_deleted_current_under_a_running_agent_is_pointed_at_its_version() {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let host = host_v1_then_v2(&repo);
    let pid = host.agent_pid().expect("an agent runs");
    std::fs::remove_file(host.layout().current_link()).unwrap();

    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "current named no valid version; pointed it at 2.0.0, the version the running agent runs from"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(current_target(&host).as_deref(), Some("versions/2.0.0"));
    assert_eq!(host.agent_pid(), Some(pid), "the running agent was kept");
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    // and the next recover has nothing left to do
    let out = recover(&host);
    assert!(
        stdout(&out).contains("nothing to recover"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_dangling_current_is_repaired_to_the_installed_version() {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let host = host_v1_then_v2(&repo);
    stop_agent(&host);
    std::fs::remove_dir_all(host.layout().version_dir(&v("2.0.0"))).unwrap();
    assert_eq!(current_target(&host).as_deref(), Some("versions/2.0.0"));
    assert_eq!(host.current(), None, "current dangles");
    let records = host.history().len();

    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("pointed it at 1.0.0") && stdout(&out).contains("started the agent"),
        "{}",
        text(&out)
    );
    assert_eq!(current_target(&host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    assert_eq!(host.history().len(), records, "no update was recorded");
}

// ---------------------------------------------------------------------------------------
// 2. `current` and the last good version both gone

/// With `current` deleted and the last good version's directory removed, recover takes the
/// newest valid version that is not quarantined: 1.0.0 here, not the quarantined 3.0.0 (newer)
/// nor 0.9.0 (older).
#[test]
fn without_the_last_good_version_the_newest_unquarantined_one_is_used() {
    let repo = repo_with(&["0.9.0", "1.0.0", "2.0.0", "3.0.0"]);
    let mut host = host_v1_then_v2(&repo);
    // 3.0.0 fails its health check here: rolled back to 2.0.0 and quarantined.
    host.soak = "1s".into();
    let out = host
        .update_cmd("3.0.0", &[])
        .env("MOLT_TEST_AGENT_3_0_0", "crash-in-soak")
        .output()
        .unwrap();
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert!(
        Quarantine::load(&host.layout().quarantine())
            .unwrap()
            .versions()
            .contains(&v("3.0.0"))
    );
    // Versions left installed around the last good one, each installed by the updater
    // (on another host: this one keeps only current and the last good version).
    let donor = TestHost::new(&repo);
    update_ok(&donor, "0.9.0", &[]);
    update_ok(&donor, "1.0.0", &[]);
    copy_version(&donor, &host, "0.9.0");
    update_ok(&donor, "3.0.0", &[]);
    copy_version(&donor, &host, "1.0.0");
    copy_version(&donor, &host, "3.0.0");
    drop(donor);
    stop_agent(&host);
    std::fs::remove_file(host.layout().current_link()).unwrap();
    std::fs::remove_dir_all(host.layout().version_dir(&v("2.0.0"))).unwrap();

    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("pointed it at 1.0.0"),
        "{}",
        text(&out)
    );
    assert_eq!(current_target(&host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

// ---------------------------------------------------------------------------------------
// 3. A corrupt journal

/// The checks after recovery from a corrupt journal while `current` (2.0.0) was never
/// recorded as good: rolled back to the last good 1.0.0, not quarantined, the damaged copy
/// kept byte for byte.
fn assert_rolled_back_from_corrupt(host: &TestHost, out: &Output, damaged: &[u8]) {
    assert_eq!(code(out), 0, "{}", text(out));
    assert!(
        stdout(out).contains("rolled back the interrupted update to 2.0.0"),
        "{}",
        text(out)
    );
    assert!(
        text(out).contains("is corrupt") && text(out).contains("journal.json.corrupt"),
        "the warning names the damaged copy: {}",
        text(out)
    );
    let kept = host.layout().state_dir().join("journal.json.corrupt");
    assert_eq!(std::fs::read(&kept).unwrap(), damaged, "the damaged copy");
    assert!(!host.layout().journal().exists(), "the journal is cleared");
    assert_eq!(current_target(host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    let last = last_record(host);
    assert_eq!(
        (last.from.clone(), last.to.clone(), last.result),
        (Some(v("1.0.0")), v("2.0.0"), Outcome::RolledBack),
        "{last:?}"
    );
    assert!(
        last.reason
            .as_deref()
            .unwrap_or_default()
            .contains("the journal was corrupt and 2.0.0 was never recorded as good"),
        "{last:?}"
    );
    assert!(
        !Quarantine::load(&host.layout().quarantine())
            .unwrap()
            .versions()
            .contains(&v("2.0.0")),
        "nothing says 2.0.0 failed: not quarantined"
    );
}

/// An update to 2.0.0 killed after its switch (no agent runs), then its journal replaced by
/// garbage: recover rolls back to 1.0.0; the next update to 2.0.0 needs no --force.
#[test]
fn a_garbage_journal_after_the_switch_rolls_back_to_the_last_good_version() {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let host = TestHost::new(&repo);
    update_ok(&host, "1.0.0", &[]);
    update_killed_at(&host, "2.0.0", "switched");
    assert_eq!(current_target(&host).as_deref(), Some("versions/2.0.0"));
    assert_eq!(
        host.agent_pid(),
        None,
        "killed before the new agent started"
    );
    let garbage = b"\x00\xff\xfe{\"version\":1,\"step\":\x07garbage";
    std::fs::write(host.layout().journal(), garbage).unwrap();

    let out = recover(&host);
    assert_rolled_back_from_corrupt(&host, &out, garbage);

    let out = host.update("2.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

/// The rollback recovery starts from a corrupt journal is itself killed once its
/// `rolling_back` step is written: the next recovery finishes it, and still does not
/// quarantine 2.0.0 (nothing says it failed; the journal records the rollback's reason, and
/// an older rule quarantined whenever a reason was there).
#[test]
fn a_killed_rollback_that_blamed_nothing_quarantines_nothing() {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let host = TestHost::new(&repo);
    update_ok(&host, "1.0.0", &[]);
    update_killed_at(&host, "2.0.0", "switched");
    std::fs::write(host.layout().journal(), b"{\"version\":1,\"st").unwrap();
    let out = host
        .updater()
        .args(["--soak", "300ms", "--health-timeout", "5s"])
        .args(["recover", "--service", "direct"])
        .env("MOLT_TEST_KILL_AT", "rolling_back")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert_eq!(journal_step(&host).as_deref(), Some("rolling_back"));

    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    let q = Quarantine::load(&host.layout().quarantine()).unwrap();
    assert!(q.versions().is_empty(), "quarantined: {:?}", q.versions());
    assert_eq!(last_record(&host).result, Outcome::RolledBack);
}

/// The updater killed during the new agent's soak, and its journal torn in half (a crash
/// mid-write): recover stops the 2.0.0 agent and puts a healthy 1.0.0 agent back.
#[test]
fn a_truncated_journal_after_the_switch_rolls_back_and_stops_the_new_agent() {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let mut host = TestHost::new(&repo);
    update_ok(&host, "1.0.0", &[]);
    let new_agent = update_killed_in_soak(&mut host, "2.0.0");
    let journal = std::fs::read(host.layout().journal()).unwrap();
    let torn = &journal[..journal.len() / 2];
    std::fs::write(host.layout().journal(), torn).unwrap();

    let out = recover(&host);
    assert_rolled_back_from_corrupt(&host, &out, torn);
    assert!(!pid_alive(new_agent), "the 2.0.0 agent was stopped");
    assert_ne!(host.agent_pid(), Some(new_agent));
}

/// A corrupt journal while `current` is the last good version (the update was killed as it
/// stopped the old agent, before `current` moved): nothing is rolled back or recorded; the
/// agent is started again.
#[test]
fn a_corrupt_journal_before_the_switch_only_starts_the_agent() {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let host = TestHost::new(&repo);
    update_ok(&host, "1.0.0", &[]);
    let records = host.history().len();
    update_killed_at(&host, "2.0.0", "switching");
    assert_eq!(current_target(&host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.agent_pid(), None, "the old agent was stopped");
    let garbage = b"{\"version\":1,\"id\":\"x\",\"from\":\"1.0.0\",\"to\":\"2.";
    std::fs::write(host.layout().journal(), garbage).unwrap();

    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        stdout(&out).trim(),
        "nothing to recover; started the agent, which was not running",
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("is corrupt"), "{}", text(&out));
    let kept = host.layout().state_dir().join("journal.json.corrupt");
    assert_eq!(std::fs::read(&kept).unwrap(), garbage);
    assert!(!host.layout().journal().exists());
    assert_eq!(current_target(&host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    assert_eq!(host.history().len(), records, "nothing was recorded");
}

// ---------------------------------------------------------------------------------------
// 4. A journal written by a newer updater

/// A newer updater's journal (with a field this updater does not know).
fn newer_journal(version: u32, step: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "version": version,
        "id": "20300101T000000Z-0123abcd",
        "from": "1.0.0",
        "to": "2.0.0",
        "step": step,
        "nonce": null,
        "started_at": "2030-01-01T00:00:00Z",
        "updated_at": "2030-01-01T00:00:05Z",
        "canary": { "percent": 5 },
    }))
    .unwrap()
}

/// `recover` leaves a newer updater's journal byte for byte, starts the stopped agent, and
/// an update refuses (exit 1) naming the journal, changing nothing.
fn newer_journal_is_left_alone(bytes: &[u8], step_shown: &str) {
    let repo = repo_with(&["1.0.0", "2.0.0"]);
    let host = TestHost::new(&repo);
    update_ok(&host, "1.0.0", &[]);
    let records = host.history().len();
    let journal = host.layout().journal();
    std::fs::write(&journal, bytes).unwrap();
    stop_agent(&host);

    let out = recover(&host);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "left an unfinished update at step {step_shown} (written by a newer updater) alone"
        ),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("was written by a newer updater"),
        "the warning: {}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        bytes,
        "the journal is untouched"
    );
    assert!(
        !host
            .layout()
            .state_dir()
            .join("journal.json.corrupt")
            .exists()
    );
    assert_eq!(host.assert_healthy(), v("1.0.0"), "an agent runs");
    let pid = host.agent_pid().unwrap();

    let out = host.update("2.0.0", &[]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let expected = format!(
        "{} holds an unfinished update at step \"{step_shown}\" from a newer updater; this updater leaves it alone",
        journal.display()
    );
    assert!(text(&out).contains(&expected), "{}", text(&out));
    assert!(
        text(&out).contains("run the newer updater that wrote it"),
        "the hint: {}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        bytes,
        "the journal is untouched"
    );
    assert_eq!(current_target(&host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.agent_pid(), Some(pid), "the agent was not restarted");
    assert!(
        !host.layout().version_dir(&v("2.0.0")).exists(),
        "nothing installed"
    );
    assert_eq!(host.history().len(), records, "nothing was recorded");
}

#[test]
fn a_journal_of_a_newer_state_version_is_left_alone() {
    newer_journal_is_left_alone(
        &newer_journal(molt_host::state::STATE_VERSION + 1, "switched"),
        "switched",
    );
}

/// A newer updater that changed the journal's shape (here `to` became an object and `id`
/// went away): its `version` alone makes it not this updater's, though it does not parse.
#[test]
fn a_journal_of_a_newer_shape_is_left_alone() {
    let bytes = serde_json::to_vec_pretty(&serde_json::json!({
        "version": molt_host::state::STATE_VERSION + 1,
        "update": "20300101T000000Z-0123abcd",
        "from": "1.0.0",
        "to": { "version": "2.0.0", "channel": "stable" },
        "step": "switched",
    }))
    .unwrap();
    newer_journal_is_left_alone(&bytes, "switched");
}

#[test]
fn a_journal_with_an_unknown_step_is_left_alone() {
    newer_journal_is_left_alone(&newer_journal(1, "verifying_canary"), "unknown");
}

// ---------------------------------------------------------------------------------------
// 5. An interrupted first install

/// The checks after recovery completed a first install of 1.0.0.
fn assert_first_install_completed(host: &TestHost, out: &Output) {
    assert_eq!(code(out), 0, "{}", text(out));
    assert_eq!(
        stdout(out).trim(),
        "completed the record of a finished update (success)",
        "{}",
        text(out)
    );
    assert_eq!(current_target(host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    assert!(!host.layout().journal().exists(), "the journal is cleared");
    let records = host.history();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (
            records[0].from.clone(),
            records[0].to.clone(),
            records[0].result
        ),
        (None, v("1.0.0"), Outcome::Success),
        "{records:?}"
    );
    // A completed first install puts the standalone updater in place, as a real file: the
    // systemd unit's ExecStartPre and the recovery timer run it.
    let standalone = host.layout().updater_bin();
    assert!(
        std::fs::symlink_metadata(&standalone)
            .map(|m| m.file_type().is_file())
            .unwrap_or(false),
        "{} is missing after the recovered first install",
        standalone.display()
    );
}

/// A first install killed after its switch, before the agent started: recover starts it,
/// checks its health and records the install as a success.
#[test]
fn a_first_install_killed_after_the_switch_is_completed() {
    let repo = repo_with(&["1.0.0"]);
    let host = TestHost::new(&repo);
    update_killed_at(&host, "1.0.0", "switched");
    assert_eq!(current_target(&host).as_deref(), Some("versions/1.0.0"));
    assert_eq!(journal_step(&host).as_deref(), Some("switched"));
    assert_eq!(host.agent_pid(), None);
    assert!(host.history().is_empty());

    let out = recover(&host);
    assert_first_install_completed(&host, &out);
    let last = last_record(&host);
    assert!(
        last.reason
            .as_deref()
            .unwrap_or_default()
            .contains("completed by recovery after its health check"),
        "{last:?}"
    );
}

/// A first install whose updater was SIGKILLed during the new agent's soak: recover stops
/// that agent, starts a fresh one, checks its health and records a success.
#[test]
fn a_first_install_killed_in_its_soak_is_restarted_and_completed() {
    let repo = repo_with(&["1.0.0"]);
    let mut host = TestHost::new(&repo);
    let first = update_killed_in_soak(&mut host, "1.0.0");

    let out = recover(&host);
    assert_first_install_completed(&host, &out);
    assert!(!pid_alive(first), "the unconfirmed agent was stopped");
    assert_ne!(host.agent_pid(), Some(first), "a fresh agent runs");
}

/// A first install killed right after its commit was journalled: recover completes its
/// record (the update had succeeded).
#[test]
fn a_first_install_killed_at_its_commit_is_recorded() {
    let repo = repo_with(&["1.0.0"]);
    let host = TestHost::new(&repo);
    update_killed_at(&host, "1.0.0", "committed");
    assert_eq!(journal_step(&host).as_deref(), Some("committed"));

    let out = recover(&host);
    assert_first_install_completed(&host, &out);
}
