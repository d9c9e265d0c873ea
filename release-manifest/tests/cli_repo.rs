//! The repository commands, run as real processes: keys, repo init, package, add,
//! set-*, refresh, check-expiry, root rotate and verify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn rm(args: &[&str]) -> Out {
    let out = Command::cargo_bin("release-manifest")
        .unwrap()
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

fn ok(args: &[&str]) -> String {
    let out = rm(args);
    assert_eq!(
        out.code, 0,
        "{args:?}\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).to_str().unwrap().to_owned()
    }

    /// keys, a us-east-1 repository, and release 1.0.0 in it.
    fn new() -> Site {
        let site = Site {
            dir: tempfile::tempdir().unwrap(),
        };
        ok(&["keys", "generate", "--out", &site.path("keys")]);
        ok(&[
            "repo",
            "init",
            "--region",
            "us-east-1",
            "--keys",
            &site.path("keys"),
            "--out",
            &site.path("repo"),
        ]);
        site.release("1.0.0");
        site
    }

    fn release(&self, version: &str) {
        let bin = self.dir.path().join(format!("bin-{version}"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            bin.join("agent"),
            format!("#!/bin/sh\necho agent {version}\n"),
        )
        .unwrap();
        std::fs::write(
            bin.join("updater"),
            format!("#!/bin/sh\necho updater {version}\n"),
        )
        .unwrap();
        ok(&[
            "package",
            "--version",
            version,
            "--platform",
            "linux-amd64",
            "--agent",
            bin.join("agent").to_str().unwrap(),
            "--updater",
            bin.join("updater").to_str().unwrap(),
            "--out",
            &self.path("dist"),
        ]);
        ok(&[
            "add",
            "--repo",
            &self.path("repo"),
            "--dist",
            &self.path("dist"),
            "--version",
            version,
            "--keys",
            &self.path("keys"),
        ]);
    }

    fn verify(&self) -> Out {
        rm(&[
            "verify",
            &self.path("repo"),
            "--trusted-root",
            &self.path("keys/root.json"),
            "--region",
            "us-east-1",
        ])
    }

    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("repo"), &mut out);
        out.sort();
        out
    }
}

#[test]
fn a_repository_built_with_the_cli_verifies() {
    let site = Site::new();
    let out = site.verify();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("region:        us-east-1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ok") && out.stdout.contains("molt-agent-1.0.0-linux-amd64.tar.gz")
    );
    assert!(out.stdout.trim_end().ends_with("verified"));
    // --json, and the layout of SPEC §4 with consistent snapshots
    let json = rm(&[
        "verify",
        &format!("file://{}", site.path("repo")),
        "--trusted-root",
        &site.path("keys/root.json"),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["targets"].as_array().unwrap().len(), 3);
    let names: Vec<String> = site
        .files()
        .iter()
        .map(|p| {
            p.strip_prefix(site.dir.path().join("repo"))
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for expected in [
        "metadata/1.root.json",
        "metadata/2.targets.json",
        "metadata/2.snapshot.json",
        "metadata/timestamp.json",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("targets/")
                && n.ends_with(".molt-agent-1.0.0-linux-amd64.tar.gz"))
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("targets/") && n.ends_with(".manifest.json"))
    );
}

#[test]
fn flipping_one_byte_in_any_file_fails_verify_naming_it() {
    let site = Site::new();
    for file in site.files() {
        let original = std::fs::read(&file).unwrap();
        let mut bytes = original.clone();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        let out = site.verify();
        let name = file.file_name().unwrap().to_str().unwrap();
        let role = name.split('.').rev().nth(1).unwrap_or(name); // "timestamp", "snapshot", …
        assert_ne!(out.code, 0, "flipping {} went unnoticed", file.display());
        assert_eq!(out.code, 4, "{}: {}", file.display(), out.stderr);
        assert!(
            out.stderr.contains(name) || out.stderr.contains(role),
            "the failure for {} does not name it: {}",
            file.display(),
            out.stderr
        );
        std::fs::write(&file, &original).unwrap();
    }
    assert_eq!(site.verify().code, 0);
}

#[test]
fn online_commands_need_no_root_key() {
    let site = Site::new();
    std::fs::remove_dir_all(site.dir.path().join("keys/root")).unwrap();
    site.release("1.1.0");
    ok(&[
        "set-status",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--version",
        "1.0.0",
        "--status",
        "Inactive",
    ]);
    ok(&[
        "set-stable",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--version",
        "1.1.0",
    ]);
    ok(&[
        "set-max-version",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--version",
        "1.1.0",
    ]);
    ok(&[
        "refresh",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
    ]);
    assert_eq!(site.verify().code, 0);
    // repo init needs them (SPEC §8), and says so
    let out = rm(&[
        "repo",
        "init",
        "--region",
        "eu-west-1",
        "--keys",
        &site.path("keys"),
        "--out",
        &site.path("repo-eu"),
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("holds no root keys"), "{}", out.stderr);
    assert!(!site.dir.path().join("repo-eu/metadata").exists());
}

#[test]
fn status_changes_reach_the_manifest() {
    let site = Site::new();
    site.release("1.1.0");
    ok(&[
        "set-status",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--version",
        "1.1.0",
        "--status",
        "Deprecated",
    ]);
    ok(&[
        "set-max-version",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--version",
        "1.0.0",
    ]);
    let out = rm(&[
        "set-stable",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--version",
        "1.1.0",
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("Stable must be an Active version; 1.1.0 is Deprecated"),
        "{}",
        out.stderr
    );
    // read the signed manifest back and resolve against it
    let manifest = site
        .files()
        .into_iter()
        .filter(|p| p.to_str().unwrap().ends_with(".manifest.json"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let m = molt_schema::manifest::Manifest::parse(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m.max_version.unwrap().to_string(), "1.0.0");
    let out = rm(&[
        "resolve",
        "--manifest",
        manifest.to_str().unwrap(),
        "--platform",
        "linux-amd64",
        "--current",
        "1.1.0",
        "--target",
        "latest",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("to:        1.0.0"), "{}", out.stdout);
    assert!(out.stdout.contains("recalled"), "{}", out.stdout);
}

#[test]
fn releases_are_immutable_and_mistakes_are_refused_clearly() {
    let site = Site::new();
    // the same version with other bytes
    let bin = site.dir.path().join("bin-1.0.0");
    std::fs::write(bin.join("agent"), "#!/bin/sh\necho something else\n").unwrap();
    let dist2 = site.path("dist2");
    ok(&[
        "package",
        "--version",
        "1.0.0",
        "--platform",
        "linux-amd64",
        "--agent",
        bin.join("agent").to_str().unwrap(),
        "--updater",
        bin.join("updater").to_str().unwrap(),
        "--out",
        &dist2,
    ]);
    let out = rm(&[
        "add",
        "--repo",
        &site.path("repo"),
        "--dist",
        &dist2,
        "--version",
        "1.0.0",
        "--keys",
        &site.path("keys"),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("already published with other bytes"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: published releases never change"),
        "{}",
        out.stderr
    );
    // a version with no archives
    let out = rm(&[
        "add",
        "--repo",
        &site.path("repo"),
        "--dist",
        &site.path("dist"),
        "--version",
        "7.0.0",
        "--keys",
        &site.path("keys"),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("has no archives for molt-agent 7.0.0"),
        "{}",
        out.stderr
    );
    // no repository there
    let out = rm(&[
        "add",
        "--repo",
        &site.path("nowhere"),
        "--dist",
        &site.path("dist"),
        "--version",
        "1.0.0",
        "--keys",
        &site.path("keys"),
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("repo init"), "{}", out.stderr);
    // init over an existing repository
    let out = rm(&[
        "repo",
        "init",
        "--region",
        "us-east-1",
        "--keys",
        &site.path("keys"),
        "--out",
        &site.path("repo"),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("already holds a repository"),
        "{}",
        out.stderr
    );
    // a typo in a status
    let out = rm(&[
        "set-status",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--version",
        "1.0.0",
        "--status",
        "Retired",
    ]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown status \"Retired\""),
        "{}",
        out.stderr
    );
    assert_eq!(
        site.verify().code,
        0,
        "nothing above changed the repository"
    );
}

#[test]
fn check_expiry_lists_roles_expiring_soon() {
    let site = Site::new();
    let out = rm(&[
        "check-expiry",
        "--repo",
        &site.path("repo"),
        "--within",
        "1h",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = rm(&[
        "check-expiry",
        "--repo",
        &site.path("repo"),
        "--within",
        "2days",
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("timestamp") && out.stdout.contains("EXPIRES SOON"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("error: timestamp expires within 2days"),
        "{}",
        out.stderr
    );
    let out = rm(&[
        "check-expiry",
        "--repo",
        &site.path("repo"),
        "--within",
        "30days",
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("snapshot, timestamp expire within"),
        "{}",
        out.stderr
    );
    let json = rm(&[
        "check-expiry",
        "--repo",
        &site.path("repo"),
        "--within",
        "2days",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);
    // refresh moves the timestamp and snapshot on
    ok(&[
        "refresh",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--timestamp-expires",
        "3days",
        "--snapshot-expires",
        "10days",
    ]);
    let out = rm(&[
        "check-expiry",
        "--repo",
        &site.path("repo"),
        "--within",
        "2days",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[test]
fn verify_refuses_another_region_and_an_expired_repository() {
    let site = Site::new();
    let out = rm(&[
        "verify",
        &site.path("repo"),
        "--trusted-root",
        &site.path("keys/root.json"),
        "--region",
        "eu-west-1",
    ]);
    assert_eq!(out.code, 4);
    assert!(
        out.stderr
            .contains("the manifest is for region us-east-1, but this host is in eu-west-1"),
        "{}",
        out.stderr
    );
    ok(&[
        "refresh",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("keys"),
        "--timestamp-expires",
        "1s",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = site.verify();
    assert_eq!(out.code, 4);
    assert!(
        out.stderr.contains("timestamp metadata has expired"),
        "{}",
        out.stderr
    );
}

#[test]
fn root_rotation_through_the_cli() {
    let site = Site::new();
    ok(&[
        "keys",
        "generate",
        "--out",
        &site.path("keys2"),
        "--root-keys",
        "2",
        "--root-threshold",
        "2",
    ]);
    ok(&[
        "root",
        "rotate",
        "--keys",
        &site.path("keys"),
        "--new-keys",
        &site.path("keys2"),
        "--repo",
        &site.path("repo"),
    ]);
    // a host that still trusts root v1 follows the chain
    assert_eq!(site.verify().code, 0);
    // and so does one installed with the new root
    let out = rm(&[
        "verify",
        &site.path("repo"),
        "--trusted-root",
        &site.path("keys2/root.json"),
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("root v2"), "{}", out.stdout);
    // new regions created later get the whole chain
    ok(&[
        "repo",
        "init",
        "--region",
        "eu-west-1",
        "--keys",
        &site.path("keys2"),
        "--out",
        &site.path("repo-eu"),
    ]);
    let out = rm(&[
        "verify",
        &site.path("repo-eu"),
        "--trusted-root",
        &site.path("keys/root.json"),
        "--region",
        "eu-west-1",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[test]
fn another_repositorys_keys_are_refused_with_the_likely_cause() {
    let site = Site::new();
    ok(&["keys", "generate", "--out", &site.path("other-keys")]);
    let before = site.files();
    let out = rm(&[
        "refresh",
        "--repo",
        &site.path("repo"),
        "--keys",
        &site.path("other-keys"),
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("TUF operation failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: the `caused by:` lines say why; most often --keys holds keys"),
        "{}",
        out.stderr
    );
    assert_eq!(site.files(), before, "a refused refresh changes nothing");
    assert_eq!(site.verify().code, 0);
}
