//! The updater's command line, run as a real process: usage, config errors, and the
//! read-only commands on an empty root. (Cargo builds the `updater` binary for these
//! tests, which the end-to-end tests in `tests/` also run.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;

fn updater(root: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("updater").unwrap();
    c.arg("--root")
        .arg(root)
        .env_remove("MOLT_LOG")
        .env_remove("MOLT_CONFIG");
    c
}

#[test]
fn version_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = updater(dir.path()).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("updater {}", molt_host::build::version())
    );
    let out = updater(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --target-version"));
    let out = updater(dir.path())
        .args(["--target-version", "latest", "--service", "upstart"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service manager \"upstart\""));
    let out = updater(dir.path())
        .args(["--target-version", "v1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_config_typo_names_the_key_and_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "region = \"us-east-1\"\n[updater]\nsoack = \"30s\"\n",
    )
    .unwrap();
    let out = updater(&dir.path().join("root"))
        .arg("--config")
        .arg(&config)
        .args(["--target-version", "latest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a config error exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("soack") && err.contains("line 3"), "{err}");
    assert!(!dir.path().join("root").exists(), "nothing was created");
}

#[test]
fn no_source_and_no_region_give_hints() {
    let dir = tempfile::tempdir().unwrap();
    let out = updater(dir.path())
        .args([
            "--target-version",
            "latest",
            "--region",
            "us-east-1",
            "--trusted-root",
        ])
        .arg(dir.path().join("root.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the trusted root"), "{err}");
    std::fs::write(dir.path().join("root.json"), "{}").unwrap();
    let out = updater(dir.path())
        .args([
            "--target-version",
            "latest",
            "--region",
            "us-east-1",
            "--trusted-root",
        ])
        .arg(dir.path().join("root.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no repository source is configured") && err.contains("hint: set `source`"),
        "{err}"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing source is a config error"
    );
    let out = updater(dir.path())
        .args([
            "--target-version",
            "latest",
            "--source",
            "file:///nowhere/",
            "--trusted-root",
        ])
        .arg(dir.path().join("root.json"))
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot tell this host's region") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn status_history_and_recover_on_an_empty_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = updater(dir.path()).arg("status").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("current:     (none)"));
    let out = updater(dir.path()).arg("history").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no updates recorded"));
    let out = updater(dir.path())
        .args(["recover", "--service", "direct"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to recover"
    );
}

/// A source typed as a plain path, relative or absolute, is a config error (exit 2) whose
/// hint says how to write it.
#[test]
fn a_source_typed_as_a_path_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), "{}").unwrap();
    for source in ["./repo", "repo", "/srv/molt/us-east-1"] {
        let out = updater(&dir.path().join("root"))
            .args(["--target-version", "latest", "--region", "us-east-1"])
            .args(["--source", source, "--trusted-root"])
            .arg(dir.path().join("root.json"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{source}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("which is not a URL")
                && err.contains("hint: write a directory as a file:// URL"),
            "{source}: {err}"
        );
    }
}

/// A typo in the config file and a config file that cannot be read are the operator's
/// input: exit 2 (usage or config), as from the agent (agent/tests/cli.rs).
#[test]
fn config_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "regoin = \"us-east-1\"\n").unwrap();
    let missing = dir.path().join("missing.toml");
    for config in [&typo, &missing] {
        let out = updater(dir.path())
            .arg("--config")
            .arg(config)
            .args(["--target-version", "latest"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "updater with {config:?}: {err}");
        assert!(err.contains("config file"), "{err}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_updater"))
            .arg("status")
            .arg("--root")
            .arg(dir.path())
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "updater status with {config:?}");
    }
}

/// The text an operator reads, locked by snapshots: temporary paths are filtered.
fn snapshot(text: &str, root: &std::path::Path) -> String {
    text.replace(&root.display().to_string(), "<root>")
}

#[test]
fn snapshots_of_status_history_and_rendered_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = updater(dir.path()).arg("status").output().unwrap();
    insta::assert_snapshot!(
        "status_empty_root",
        snapshot(&String::from_utf8_lossy(&out.stdout), dir.path())
    );
    let out = updater(dir.path()).arg("history").output().unwrap();
    insta::assert_snapshot!(
        "history_empty_root",
        snapshot(&String::from_utf8_lossy(&out.stdout), dir.path())
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "region = \"us-east-1\"\n[updater]\nsoack = \"30s\"\n",
    )
    .unwrap();
    let out = updater(dir.path())
        .arg("--config")
        .arg(&config)
        .args(["--target-version", "latest"])
        .output()
        .unwrap();
    insta::assert_snapshot!(
        "error_config_typo",
        snapshot(&String::from_utf8_lossy(&out.stderr), dir.path())
    );
    let out = updater(dir.path())
        .args(["--target-version", "latest", "--region", "us-east-1"])
        .arg("--trusted-root")
        .arg(dir.path().join("missing-root.json"))
        .output()
        .unwrap();
    insta::assert_snapshot!(
        "error_no_trusted_root",
        snapshot(&String::from_utf8_lossy(&out.stderr), dir.path())
    );
}
