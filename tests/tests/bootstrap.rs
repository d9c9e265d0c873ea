//! `updater bootstrap`, what the `.deb` and `.rpm` run: the real updater installs the
//! molt-agent archive an OS package carries, through the same switch, health check and
//! rollback as an update, and steps aside when molt already has that version or a newer
//! one. The packages themselves are built and installed under a real systemd in
//! `tests/tests/systemd.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

use molt_host::state::{Outcome, Quarantine};
use molt_schema::manifest::Status;
use molt_schema::{Platform, Version};
use molt_tests::fixture::{TestHost, TestRepo};
use molt_updater::bootstrap::{Bootstrap, DESCRIPTION};

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

fn platform() -> Platform {
    Platform::detect().unwrap_or(Platform::LinuxAmd64)
}

/// The directory a package of `version` installs as /usr/lib/molt: the release's archive
/// and the `bootstrap.json` describing it.
fn package_dir(repo: &TestRepo, version: &str) -> tempfile::TempDir {
    let dist = repo.package(version, platform());
    let file = format!("molt-agent-{}.tar.gz", platform());
    let archive = dist.join("molt-agent").join(version).join(&file);
    let bytes = std::fs::read(&archive).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(&file), &bytes).unwrap();
    let description = Bootstrap {
        format: 1,
        version: v(version),
        platform: platform(),
        file,
        length: bytes.len() as u64,
        sha256: molt_schema::artifact::Sha256::digest(&bytes),
    };
    std::fs::write(
        dir.path().join(DESCRIPTION),
        serde_json::to_vec_pretty(&description).unwrap(),
    )
    .unwrap();
    std::fs::copy(repo.trusted_root(), dir.path().join("root.json")).unwrap();
    dir
}

/// A host whose config holds only what a package's config holds for an update: nothing
/// about a repository is needed to bootstrap.
fn host(repo: &TestRepo) -> TestHost {
    let host = TestHost::new(repo);
    std::fs::write(
        host.root.path().join("agent.toml"),
        "[updater]\nsoak = \"300ms\"\nhealth_timeout = \"5s\"\n",
    )
    .unwrap();
    host
}

fn bootstrap(host: &TestHost, dir: &Path, service: &str) -> Output {
    bootstrap_with(host, dir, service, &[])
}

fn bootstrap_with(host: &TestHost, dir: &Path, service: &str, extra: &[&str]) -> Output {
    let mut c = host.updater();
    c.arg("bootstrap")
        .arg("--package-dir")
        .arg(dir)
        .args(["--service", service])
        .args(extra);
    c.output().unwrap()
}

#[test]
fn a_package_installs_its_version_on_a_new_host_and_upgrades_an_older_one() {
    let repo = TestRepo::new("us-east-1");
    let host = host(&repo);
    let one = package_dir(&repo, "1.0.0");
    let out = bootstrap(&host, one.path(), "direct");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("(nothing) -> 1.0.0"), "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    let first = host.history().pop().unwrap();
    assert_eq!(first.result, Outcome::Success);
    let reason = first.reason.unwrap();
    assert!(
        reason.contains("first install") && reason.contains("OS package"),
        "{reason}"
    );
    // the standalone updater the agent and the units run is in place, as after install.sh
    assert!(host.layout().updater_bin().is_file());
    let old_pid = host.agent_pid().unwrap();

    let two = package_dir(&repo, "2.0.0");
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
    assert_ne!(
        host.agent_pid(),
        Some(old_pid),
        "the new version's agent runs"
    );
    let up = host.history().pop().unwrap();
    assert_eq!((up.from, up.to.clone()), (Some(v("1.0.0")), v("2.0.0")));
    assert!(up.reason.unwrap().starts_with("upgrade"));
    // the previous version stays as the last known-good one, as after any update
    assert_eq!(
        host.layout().installed_versions(),
        vec![v("1.0.0"), v("2.0.0")]
    );
}

#[test]
fn a_package_steps_aside_when_molt_has_the_same_or_a_newer_version() {
    let repo = TestRepo::new("us-east-1");
    repo.publish("3.0.0", Status::Active);
    let host = host(&repo);
    let out = host.update("3.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid = host.agent_pid().unwrap();
    let records = host.history().len();
    for (version, says) in [
        ("2.0.0", "newer than the package's 2.0.0"),
        (
            "3.0.0",
            "is already installed; the package has nothing to add",
        ),
    ] {
        let dir = package_dir(&repo, version);
        let out = bootstrap(&host, dir.path(), "direct");
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert!(text(&out).contains(says), "{version}: {}", text(&out));
        assert_eq!(host.assert_healthy(), v("3.0.0"));
        assert_eq!(
            host.agent_pid(),
            Some(pid),
            "{version}: the agent was not touched"
        );
        assert_eq!(host.history().len(), records, "{version}: nothing recorded");
        assert_eq!(host.layout().installed_versions(), vec![v("3.0.0")]);
    }
}

#[test]
fn an_unhealthy_package_version_is_rolled_back_quarantined_and_not_tried_again() {
    let repo = TestRepo::new("us-east-1");
    let mut host = host(&repo);
    let one = package_dir(&repo, "1.0.0");
    assert_eq!(code(&bootstrap(&host, one.path(), "direct")), 0);
    host.env
        .push(("MOLT_TEST_AGENT_2_0_0".into(), "exit-at-start".into()));
    let two = package_dir(&repo, "2.0.0");
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    let q = Quarantine::load(&host.layout().quarantine()).unwrap();
    assert!(q.versions().contains(&v("2.0.0")));
    // the package's scripts run it again (a reinstall, `dpkg --configure -a`): it steps
    // aside, and says why
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("quarantined"), "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}

#[test]
fn a_damaged_package_is_refused_and_the_running_version_kept() {
    let repo = TestRepo::new("us-east-1");
    let host = host(&repo);
    let one = package_dir(&repo, "1.0.0");
    assert_eq!(code(&bootstrap(&host, one.path(), "direct")), 0);
    let pid = host.agent_pid().unwrap();
    let file = format!("molt-agent-{}.tar.gz", platform());

    // one flipped byte in the archive: exit 4, as for a download
    let two = package_dir(&repo, "2.0.0");
    let archive = two.path().join(&file);
    let mut bytes = std::fs::read(&archive).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&archive, &bytes).unwrap();
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{} is damaged", archive.display()))
            && text(&out).contains("reinstall the package"),
        "{}",
        text(&out)
    );
    // a truncated archive
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&archive, &bytes).unwrap();
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(
        text(&out).contains("is damaged") && text(&out).contains("reinstall the package"),
        "{}",
        text(&out)
    );
    // the archive missing
    std::fs::remove_file(&archive).unwrap();
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "cannot read the package's {}: it does not exist",
            archive.display()
        )) && text(&out).contains("reinstall the package"),
        "{}",
        text(&out)
    );
    // a truncated description: the message names the file and the fix
    let description = two.path().join(DESCRIPTION);
    let json = std::fs::read(&description).unwrap();
    std::fs::write(&description, &json[..json.len() / 2]).unwrap();
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains(DESCRIPTION) && text(&out).contains("reinstall the package"),
        "{}",
        text(&out)
    );
    // no package at all (a typo in --package-dir)
    let out = bootstrap(&host, &two.path().join("nope"), "direct");
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));

    assert_eq!(host.assert_healthy(), v("1.0.0"));
    assert_eq!(host.agent_pid(), Some(pid));
    assert_eq!(host.layout().installed_versions(), vec![v("1.0.0")]);
    assert!(!host.layout().journal().exists());
}

#[test]
fn a_package_for_another_platform_is_refused() {
    let repo = TestRepo::new("us-east-1");
    let host = host(&repo);
    let dir = package_dir(&repo, "1.0.0");
    let description = dir.path().join(DESCRIPTION);
    let mut b: Bootstrap = serde_json::from_slice(&std::fs::read(&description).unwrap()).unwrap();
    b.platform = if platform() == Platform::LinuxArm64 {
        Platform::LinuxAmd64
    } else {
        Platform::LinuxArm64
    };
    std::fs::write(&description, serde_json::to_vec(&b).unwrap()).unwrap();
    let out = bootstrap(&host, dir.path(), "direct");
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("but this host is") && text(&out).contains("built for this host's"),
        "{}",
        text(&out)
    );
    assert_eq!(host.current(), None);
}

/// An image baked in a chroot: no systemd runs, so the package's version is installed and
/// `current` points at it, and nothing is started. On a machine with no systemd of its own
/// the updater finds that out by itself; on one booted with systemd (a CI runner), it is
/// told with `--offline`, as the package's scripts tell it in a chroot.
#[test]
fn without_a_running_service_manager_the_version_is_installed_for_the_next_boot() {
    let booted = Path::new("/run/systemd/system").exists();
    let repo = TestRepo::new("us-east-1");
    let host = host(&repo);
    let dir = package_dir(&repo, "1.0.0");
    let told: &[&str] = if booted { &["--offline"] } else { &[] };
    let out = bootstrap_with(&host, dir.path(), "systemd", told);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let layout = host.layout();
    assert_eq!(layout.current_version(), Some(v("1.0.0")));
    assert!(layout.is_valid(&v("1.0.0")));
    assert!(layout.updater_bin().is_file());
    assert!(!layout.journal().exists());
    assert_eq!(host.agent_pid(), None, "nothing was started");
    let last = host.history().pop().unwrap();
    assert_eq!(last.result, Outcome::Success);
    assert!(last.reason.unwrap().contains("next boot"));
    // baking a newer package into the same image moves `current` again
    let two = package_dir(&repo, "2.0.0");
    let out = bootstrap_with(&host, two.path(), "systemd", &["--offline"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(layout.current_version(), Some(v("2.0.0")));
    assert_eq!(host.agent_pid(), None, "nothing was started");
}

/// A host installed from a package updates from its region afterwards, with nothing
/// about trust in its config or on the command line: the package's root became its first
/// trusted root, and stays after the package (and its root.json) is gone.
#[test]
fn a_host_installed_from_a_package_updates_from_its_region_afterwards() {
    let repo = TestRepo::new("us-east-1");
    repo.publish("2.0.0", Status::Active);
    let host = host(&repo);
    let dir = package_dir(&repo, "1.0.0");
    let out = bootstrap(&host, dir.path(), "direct");
    assert_eq!(code(&out), 0, "{}", text(&out));
    drop(dir);
    let mut c = host.updater();
    c.args([
        "--target-version",
        "latest",
        "--source",
        &host.source,
        "--region",
        &host.region,
        "--service",
        "direct",
    ]);
    let out = c.output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

/// An image build killed in the middle of the hand-over: building again without a running
/// service manager cannot finish the update (that needs the agent started) and says so,
/// changing nothing; on the booted host, the hand-over recovers it and goes on.
#[test]
fn a_hand_over_killed_in_an_image_build_is_named_and_finished_once_booted() {
    let repo = TestRepo::new("us-east-1");
    let one = package_dir(&repo, "1.0.0");
    for at in ["installed", "switching"] {
        let host = host(&repo);
        let out = host
            .updater()
            .env("MOLT_TEST_KILL_AT", at)
            .args(["bootstrap", "--package-dir"])
            .arg(one.path())
            .args(["--service", "systemd", "--offline"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{at}: killed: {}", text(&out));
        assert!(host.layout().journal().exists(), "{at}");
        let out = bootstrap_with(&host, one.path(), "systemd", &["--offline"]);
        assert_eq!(code(&out), 1, "{at}: {}", text(&out));
        assert!(
            text(&out).contains("an interrupted update's journal is in")
                && text(&out).contains("boot the image"),
            "{at}: {}",
            text(&out)
        );
        assert_eq!(host.agent_pid(), None, "{at}: nothing was started");
        let out = bootstrap(&host, one.path(), "direct");
        assert_eq!(code(&out), 0, "{at}: {}", text(&out));
        assert_eq!(host.assert_healthy(), v("1.0.0"), "{at}");
        assert!(!host.layout().journal().exists(), "{at}");
    }
}

/// The package directory typed the ways an operator types it: relative to the working
/// directory, and with a trailing slash.
#[test]
fn the_package_directory_may_be_relative_or_end_in_a_slash() {
    let repo = TestRepo::new("us-east-1");
    let host = host(&repo);
    let one = package_dir(&repo, "1.0.0");
    let parent = one.path().parent().unwrap();
    let name = one.path().file_name().unwrap().to_str().unwrap().to_owned();
    let out = host
        .updater()
        .current_dir(parent)
        .args(["bootstrap", "--package-dir", &name, "--service", "direct"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("1.0.0"));
    let two = package_dir(&repo, "2.0.0");
    let slash = format!("{}/", two.path().display());
    let out = bootstrap(&host, Path::new(&slash), "direct");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(host.assert_healthy(), v("2.0.0"));
}

/// A package of a version molt installed here and then left (recalled, or downgraded by
/// hand), installed or configured again: it steps aside instead of bringing it back.
#[test]
fn a_package_never_brings_back_a_version_molt_moved_away_from() {
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    let host = host(&repo);
    let two = package_dir(&repo, "2.0.0");
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = host.update("1.0.0", &["--allow-downgrade"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = bootstrap(&host, two.path(), "direct");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("molt installed 2.0.0 on this host before and has moved to 1.0.0"),
        "{}",
        text(&out)
    );
    assert_eq!(host.assert_healthy(), v("1.0.0"));
}
