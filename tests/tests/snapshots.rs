//! The text operators read, locked by insta snapshots, from the real binaries: the
//! updater's `--dry-run` plan, `status` and `history` after real updates, the agent's
//! `diagnose`, the release tool's publish diff and `rollout status`, and rendered errors from
//! each binary (a refused downgrade, a wrong region, a rollback and why, a bad plan).
//!
//! What changes from run to run is filtered, never the words: temporary paths, times,
//! durations, ids and nonces, pids, ports, digests, sizes, this machine's platform and this
//! build's version. A changed message shows up as a snapshot diff to review
//! (`cargo insta review`), not as a silent change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use molt_schema::Platform;
use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo, workspace_bin};

fn platform() -> Platform {
    Platform::detect().unwrap_or(Platform::LinuxAmd64)
}

/// The filters every snapshot here shares, most specific first.
fn filters(dirs: &[&Path]) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = dirs
        .iter()
        .map(|d| (regex_escape(&d.display().to_string()), "<tmp>".to_owned()))
        .collect();
    f.extend(
        [
            // RFC 3339 times, with or without fractions, and jiff's `Z` or an offset.
            (
                // This century only: a time that fell back to 1970 must show.
                r"20\d{2}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?",
                "<time>",
            ),
            (r"\b[0-9a-f]{64}\b", "<sha256>"),
            (r"\b[0-9a-f]{24}\b", "<id>"),
            (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),
            // An agent that exits at once may be gone before its pid is seen: the exit
            // detail names the pid only when it was.
            (r"\(pid \d+, exit", "(exit"),
            (r"\bpid \d+", "pid <pid>"),
            // The host's rollout seed comes from its machine id.
            (r"host seed \d+", "host seed <seed>"),
            (r"\b\d+ bytes\b", "<n> bytes"),
            (r"\b\d+(\.\d+)? ?(ms|s)\b", "<duration>"),
            (regex_escape(&platform().to_string()).as_str(), "<platform>"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
    );
    f
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn snapshot(name: &str, text: &str, dirs: &[&Path]) {
    let filters = filters(dirs);
    let refs: Vec<(&str, &str)> = filters
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    insta::with_settings!({ filters => refs, prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

/// The publish table with each row's changes in name order: the tool lists them by key, and
/// a target's key starts with its SHA-256, which changes with every build of the binaries.
fn sorted_changes(table: &str) -> String {
    let mut out = String::new();
    for line in table.lines() {
        let (head, changes) = match line.find("  Create ") {
            Some(at) => line.split_at(at + 2),
            None => (line, ""),
        };
        let mut items: Vec<String> = changes
            .split(", ")
            .filter(|c| !c.is_empty())
            .map(without_digests)
            .collect();
        items.sort();
        out.push_str(head);
        out.push_str(&items.join(", "));
        out.push('\n');
    }
    out
}

/// `text` with every run of exactly 64 hex digits written as `<sha256>`.
fn without_digests(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() == 64 {
            out.push_str("<sha256>");
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A host on 1.0.0 of a repository that also has 2.0.0; a 3.0.0 whose agent exits at once.
#[test]
fn updater_plan_status_history_and_errors() {
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    let mut host = TestHost::new(&repo);
    let out = host.update("1.0.0", &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let dirs = [repo.dir.path(), host.root.path()];

    let out = host.update("latest", &["--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    snapshot("updater_dry_run", &stdout(&out), &dirs);

    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    snapshot("updater_update_output", &stdout(&out), &dirs);

    // A downgrade without the flag: exit 3, and the rendered refusal.
    let out = host.update("1.0.0", &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    snapshot("updater_error_downgrade", &stderr(&out), &dirs);

    // The repository of another region: exit 4.
    host.region = "eu-west-1".into();
    let wrong = host.update("latest", &[]);
    host.region = "us-east-1".into();
    assert_eq!(code(&wrong), 4, "{}", stderr(&wrong));
    snapshot("updater_error_wrong_region", &stderr(&wrong), &dirs);

    // A new version whose agent exits at once: rolled back (exit 5), and the renderer says why.
    repo.publish("3.0.0", Status::Active);
    host.env
        .push(("MOLT_TEST_AGENT_3_0_0".into(), "exit-at-start".into()));
    let out = host.update("latest", &[]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    snapshot("updater_error_rolled_back", &stderr(&out), &dirs);

    let out = host.updater().arg("status").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    snapshot("updater_status", &stdout(&out), &dirs);
    let out = host.updater().arg("history").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    snapshot("updater_history", &stdout(&out), &dirs);

    // The agent's view of the same host.
    let config = host.root.path().join("diagnose.toml");
    std::fs::write(
        &config,
        format!(
            "root = \"{}\"\nregion = \"us-east-1\"\nsource = \"{}\"\ntrusted_root = \"{}\"\n[updater]\nservice = \"direct\"\n[agent]\nschedule = \"rate(1 day)\"\n",
            host.root.path().display(),
            repo.url(),
            repo.trusted_root().display()
        ),
    )
    .unwrap();
    // No credentials from this machine's environment (a CI runner's role, profile or
    // container credentials) may reach the "credentials" line.
    let mut diagnose = Command::new(workspace_bin("agent"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") || k.to_string_lossy().starts_with("MOLT_") {
            diagnose.env_remove(k);
        }
    }
    let out = diagnose
        .arg("diagnose")
        .env("MOLT_CONFIG", &config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_SHARED_CREDENTIALS_FILE", host.root.path().join("none"))
        .env("AWS_CONFIG_FILE", host.root.path().join("none"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    // The agent's own version (this build's) names no line here but `updater`'s.
    let text = stdout(&out).replace(molt_host::build::version(), "<build>");
    snapshot("agent_diagnose", &text, &dirs);
}

/// The release tool on directories: keys, two regions in two waves, a dry-run diff, the
/// publish itself, `rollout status`, and a rendered plan error.
#[test]
fn release_tool_diff_rollout_status_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tool = || {
        let mut c = Command::new(workspace_bin("release-manifest"));
        c.env_remove("MOLT_LOG")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null());
        c
    };
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {}", stderr(&out));
        out
    };
    let plan = d.join("rollout.toml");
    std::fs::write(
        &plan,
        "bucket = \"acme-molt-{region}\"\n\
         [[wave]]\nname = \"canary\"\nregions = [\"us-east-1\"]\nbake = \"0s\"\n\
         [[wave]]\nregions = [\"us-west-2\"]\nbake = \"0s\"\n",
    )
    .unwrap();
    let keys = d.join("keys");
    let buckets = d.join("buckets");
    ok(tool().args(["keys", "generate", "--out"]).arg(&keys));
    for r in ["us-east-1", "us-west-2"] {
        std::fs::create_dir_all(buckets.join(format!("acme-molt-{r}"))).unwrap();
        let init = d.join(format!("init-{r}"));
        ok(tool()
            .args(["repo", "init", "--region", r, "--keys"])
            .arg(&keys)
            .arg("--out")
            .arg(&init));
        ok(tool()
            .args(["repo", "upload", "--region", r, "--repo"])
            .arg(&init)
            .arg("--plan")
            .arg(&plan)
            .arg("--keys")
            .arg(&keys)
            .arg("--directory")
            .arg(&buckets));
    }
    // `release-manifest package` of 1.0.0 with `agent` as its agent program.
    let package = |agent: &str, out: &Path| {
        ok(tool()
            .args(["package", "--version", "1.0.0", "--platform"])
            .arg(platform().to_string())
            .arg("--agent")
            .arg(workspace_bin(agent))
            .arg("--updater")
            .arg(workspace_bin("updater"))
            .arg("--out")
            .arg(out));
    };
    let dist = d.join("dist");
    package("test-agent", &dist);
    let publish = |extra: &[&str]| {
        let mut c = tool();
        c.args(["publish", "--version", "1.0.0", "--dist"])
            .arg(&dist)
            .arg("--plan")
            .arg(&plan)
            .arg("--keys")
            .arg(&keys)
            .arg("--directory")
            .arg(&buckets)
            .args(extra);
        c
    };
    let dirs = [d];
    let out = ok(&mut publish(&["--wave", "1", "--dry-run"]));
    snapshot(
        "release_publish_diff",
        &sorted_changes(&stdout(&out)),
        &dirs,
    );
    ok(&mut publish(&["--wave", "1"]));
    let out = ok(tool()
        .args(["rollout", "status", "--version", "1.0.0", "--plan"])
        .arg(&plan)
        .arg("--directory")
        .arg(&buckets)
        .arg("--trusted-root")
        .arg(keys.join("root.json")));
    snapshot("release_rollout_status", &stdout(&out), &dirs);

    // A plan with a typo: a usage error (exit 2) that names the key and the line.
    let bad = d.join("typo.toml");
    std::fs::write(
        &bad,
        "bucket = \"acme-molt-{region}\"\n[[wave]]\nregoins = [\"us-east-1\"]\n",
    )
    .unwrap();
    let out = tool()
        .args(["rollout", "status", "--plan"])
        .arg(&bad)
        .arg("--directory")
        .arg(&buckets)
        .arg("--trusted-root")
        .arg(keys.join("root.json"))
        .output()
        .unwrap();
    assert_ne!(code(&out), 0);
    snapshot("release_error_plan_typo", &stderr(&out), &dirs);

    // Publishing the same version again with other bytes: refused, nothing clobbered.
    let other = d.join("dist-other");
    package("updater", &other);
    let out = tool()
        .args([
            "publish",
            "--version",
            "1.0.0",
            "--regions",
            "us-east-1",
            "--dist",
        ])
        .arg(&other)
        .arg("--plan")
        .arg(&plan)
        .arg("--keys")
        .arg(&keys)
        .arg("--directory")
        .arg(&buckets)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    snapshot("release_publish_clobber_refused", &stdout(&out), &dirs);
}
