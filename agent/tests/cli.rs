//! The agent's command line, run as a real process: version, usage, hold and unhold, and
//! `status --json` on an empty root. (Cargo builds the `agent` binary for these tests,
//! which the end-to-end tests in `tests/` also run.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;

fn agent(dir: &std::path::Path) -> Command {
    let config = dir.join("agent.toml");
    if !config.exists() {
        std::fs::write(
            &config,
            format!(
                "root = \"{}\"\nregion = \"us-east-1\"\n",
                dir.join("root").display()
            ),
        )
        .unwrap();
    }
    let mut c = Command::cargo_bin("agent").unwrap();
    c.env("MOLT_CONFIG", &config)
        .env_remove("MOLT_LOG")
        .env_remove("MOLT_ROOT")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
        .env("AWS_CONFIG_FILE", dir.join("none"));
    c
}

#[test]
fn version_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(dir.path()).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("agent {}", molt_host::build::version())
    );
    let out = agent(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = agent(dir.path()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hold_unhold_and_status_on_an_empty_root() {
    let dir = tempfile::tempdir().unwrap();
    let status = |dir: &std::path::Path| -> serde_json::Value {
        let out = agent(dir).args(["status", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let s = status(dir.path());
    assert!(s["installed"].is_null());
    assert!(s["hold"].is_null());
    assert_eq!(s["region"]["region"], "us-east-1");
    assert_eq!(s["region"]["source"], "config");
    assert_eq!(s["schedule"]["schedule"], "rate(14 days)");
    assert!(s["last_update"].is_null());
    // status is read-only: it made no state
    assert!(!dir.path().join("root/state").exists());

    let out = agent(dir.path())
        .args(["hold", "--reason", "audit"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = status(dir.path());
    assert_eq!(s["hold"]["by"], "command");
    assert_eq!(s["hold"]["reason"], "audit");
    let out = agent(dir.path()).arg("unhold").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("run again"));
    assert!(status(dir.path())["hold"].is_null());
    let out = agent(dir.path()).arg("unhold").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("was not on hold"));
}

/// The text an operator reads, locked by snapshots: temporary paths are filtered.
#[test]
fn snapshots_of_status_and_rendered_errors() {
    let dir = tempfile::tempdir().unwrap();
    let filter =
        |t: &[u8]| String::from_utf8_lossy(t).replace(&dir.path().display().to_string(), "<dir>");
    let out = agent(dir.path()).arg("status").output().unwrap();
    // The next run's time moves with the clock: keep the lines that do not.
    let stable: String = filter(&out.stdout)
        .lines()
        .filter(|l| !l.contains("next run") && !l.contains("wave"))
        // The version and the platform are this build's and this machine's.
        .map(|l| match l.starts_with("agent:") {
            true => "agent:       <version> (<platform>)\n".to_owned(),
            false => format!("{l}\n"),
        })
        .collect();
    insta::assert_snapshot!("status_empty_root", stable);
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "regoin = \"us-east-1\"\n").unwrap();
    let out = agent(dir.path())
        .env("MOLT_CONFIG", &typo)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("error_config_typo", filter(&out.stderr));
}
