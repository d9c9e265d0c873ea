//! `release-manifest resolve`, run as a real process against the fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;

const SSM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/schema/tests/fixtures/ssm-agent-manifest.json"
);
const MOLT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/schema/tests/fixtures/molt-manifest.json"
);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn resolve(manifest: &str, args: &[&str]) -> Out {
    let out = Command::cargo_bin("release-manifest")
        .unwrap()
        .arg("resolve")
        .arg("--manifest")
        .arg(manifest)
        .args(args)
        .env_remove("MOLT_LOG")
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[test]
fn ssm_fixture_picks_highest_active_for_linux_amd64() {
    let out = resolve(
        SSM,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.0.0",
            "--target",
            "latest",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn downgrade_refused_with_exit_3() {
    let out = resolve(
        SSM,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.2.0",
            "--target",
            "1.0.0",
        ],
    );
    assert_eq!(out.code, 3);
    assert_eq!(out.stdout, "");
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn downgrade_allowed_with_flag() {
    let out = resolve(
        SSM,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.2.0",
            "--target",
            "1.0.0",
            "--allow-downgrade",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("to:        1.0.0"), "{}", out.stdout);
    assert!(
        out.stdout.contains("reason:    downgrade"),
        "{}",
        out.stdout
    );
}

#[test]
fn unsupported_platform_refused() {
    let out = resolve(
        SSM,
        &[
            "--platform",
            "linux-musl-amd64",
            "--current",
            "1.0.0",
            "--target",
            "1.2.0",
        ],
    );
    assert_eq!(out.code, 3);
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn same_version_skips() {
    let out = resolve(
        SSM,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.2.0",
            "--target",
            "latest",
        ],
    );
    assert_eq!(out.code, 0);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn json_output_is_one_object() {
    let out = resolve(
        SSM,
        &[
            "--platform",
            "linux-arm64",
            "--current",
            "1.0.0",
            "--target",
            "latest",
            "--json",
            "--now",
            "2026-06-01T00:00:00Z",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(out.stdout);
    let refused = resolve(
        SSM,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.2.0",
            "--target",
            "1.4.0",
            "--json",
        ],
    );
    assert_eq!(refused.code, 3);
    let v: serde_json::Value = serde_json::from_str(&refused.stdout).unwrap();
    assert_eq!(v["decision"], "refuse");
    assert_eq!(v["refusal"], "recalled");
    assert_eq!(v["exit_code"], 3);
}

#[test]
fn waves_with_seed_and_clock() {
    // 1.2.0 rolls out from 2026-01-01: 5% over 4h, 25% by 24h, then everyone.
    // 1.4.0 is above MaxVersion 1.3.0, so latest is 1.2.0.
    let early = resolve(
        MOLT,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.1.0",
            "--target",
            "latest",
            "--seed",
            "1500",
            "--now",
            "2026-01-01T12:00:00Z",
        ],
    );
    assert_eq!(early.code, 0, "{}", early.stderr);
    insta::assert_snapshot!(early.stdout);
    let later = resolve(
        MOLT,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.1.0",
            "--target",
            "latest",
            "--seed",
            "1500",
            "--now",
            "2026-01-02T00:00:00Z",
        ],
    );
    assert!(
        later.stdout.contains("to:        1.2.0"),
        "{}",
        later.stdout
    );
    assert!(
        later.stdout.contains("wave time: 2026-01-02T00:00:00Z"),
        "{}",
        later.stdout
    );
    let above_max = resolve(
        MOLT,
        &[
            "--platform",
            "linux-amd64",
            "--current",
            "1.1.0",
            "--target",
            "1.4.0",
        ],
    );
    assert_eq!(above_max.code, 3);
    assert!(
        above_max
            .stderr
            .contains("above the manifest's MaxVersion 1.3.0"),
        "{}",
        above_max.stderr
    );
}

#[test]
fn bad_inputs() {
    let missing = resolve(
        "/nonexistent/manifest.json",
        &["--platform", "linux-amd64", "--target", "latest"],
    );
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .starts_with("error: cannot read manifest /nonexistent/manifest.json"),
        "{}",
        missing.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("manifest.json");
    std::fs::write(&bad, br#"{"SchemaVersion":"9.0","Packages":[]}"#).unwrap();
    let out = resolve(
        bad.to_str().unwrap(),
        &["--platform", "linux-amd64", "--target", "latest"],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is not a usable manifest"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unsupported SchemaVersion"),
        "{}",
        out.stderr
    );

    let typo = resolve(SSM, &["--platform", "linux-x64", "--target", "latest"]);
    assert_eq!(typo.code, 2);
    assert!(
        typo.stderr.contains("unknown platform \"linux-x64\""),
        "{}",
        typo.stderr
    );
    let bad_seed = resolve(
        SSM,
        &[
            "--platform",
            "linux-amd64",
            "--target",
            "latest",
            "--seed",
            "4096",
        ],
    );
    assert_eq!(bad_seed.code, 2);
    assert!(bad_seed.stderr.contains("0..2048"), "{}", bad_seed.stderr);
}
