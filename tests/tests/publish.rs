//! Publishing to per-region buckets on the real local S3 server with the real
//! `release-manifest` binary (aws-sdk-s3 inside): region lag, a publisher killed at
//! random points, readers during a publish, clobbers and races, and the rollout guards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use molt_schema::Platform;
use molt_tests::fixture::{TestHost, TestRepo, workspace_bin};
use molt_tests::s3::S3Server;

const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];

/// Keys, a plan, packaged releases, and three regions' repositories in their buckets.
struct Fleet {
    s3: S3Server,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new(bake: &str) -> Fleet {
        let s3 = S3Server::start();
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet { s3, dir };
        for r in REGIONS {
            fleet.s3.create_bucket(&format!("acme-molt-{r}"));
        }
        fleet.s3.create_bucket("acme-molt-reports");
        fleet.write_plan(bake, "");
        fleet.ok(fleet
            .tool()
            .args(["keys", "generate", "--out"])
            .arg(fleet.keys()));
        for r in REGIONS {
            let local = fleet.dir.path().join(format!("init-{r}"));
            fleet.ok(fleet
                .tool()
                .args(["repo", "init", "--region", r, "--keys"])
                .arg(fleet.keys())
                .arg("--out")
                .arg(&local));
            fleet.ok(fleet
                .plan_cmd(&["repo", "upload", "--region", r])
                .arg("--repo")
                .arg(&local));
        }
        fleet
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn plan(&self) -> PathBuf {
        self.dir.path().join("rollout.toml")
    }

    fn write_plan(&self, bake: &str, extra: &str) {
        std::fs::write(
            self.plan(),
            format!(
                "bucket = \"acme-molt-{{region}}\"\nendpoint_url = \"{}\"\nreports = \"s3://acme-molt-reports/molt/\"\nfailure_threshold = 0.2\nconcurrency = 3\n{extra}\n\
                 [[wave]]\nname = \"canary\"\nregions = [\"us-east-1\"]\nbake = \"{bake}\"\n\
                 [[wave]]\nregions = [\"us-west-2\", \"eu-west-1\"]\nbake = \"{bake}\"\n",
                self.s3.endpoint()
            ),
        )
        .unwrap();
    }

    fn tool(&self) -> Command {
        let mut c = Command::new(workspace_bin("release-manifest"));
        c.envs(self.s3.env_for_credentials())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("MOLT_LOG")
            .stdin(Stdio::null());
        c
    }

    /// `release-manifest <args> --plan <plan> --keys <keys>` where the command takes them.
    fn plan_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.tool();
        c.args(args)
            .arg("--plan")
            .arg(self.plan())
            .arg("--keys")
            .arg(self.keys());
        c
    }

    fn ok(&self, c: &mut Command) -> Output {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Packages `version` (the test agent and the real updater) into its own dist.
    fn dist(&self, version: &str) -> PathBuf {
        let dist = self.dir.path().join(format!("dist-{version}"));
        if !dist.exists() {
            self.ok(self
                .tool()
                .args(["package", "--version", version, "--platform"])
                .arg(platform().to_string())
                .arg("--agent")
                .arg(workspace_bin("test-agent"))
                .arg("--updater")
                .arg(workspace_bin("updater"))
                .arg("--out")
                .arg(&dist));
        }
        dist
    }

    fn publish(&self, version: &str, scope: &[&str]) -> Command {
        let mut c = self.plan_cmd(&["publish", "--version", version]);
        c.arg("--dist").arg(self.dist(version)).args(scope);
        c
    }

    fn url(&self, region: &str) -> String {
        format!("{}/acme-molt-{region}/", self.s3.endpoint())
    }

    fn verify(&self, region: &str) -> Output {
        self.tool()
            .args([
                "verify",
                &self.url(region),
                "--region",
                region,
                "--trusted-root",
            ])
            .arg(self.keys().join("root.json"))
            .output()
            .unwrap()
    }

    /// `rollout status --json` (for `version`, if given): the row of each region.
    fn rollout_status(&self, version: Option<&str>) -> Vec<serde_json::Value> {
        let mut c = self.tool();
        c.args(["rollout", "status", "--json"]);
        if let Some(v) = version {
            c.args(["--version", v]);
        }
        let out = c
            .arg("--plan")
            .arg(self.plan())
            .arg("--trusted-root")
            .arg(self.keys().join("root.json"))
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["regions"].as_array().unwrap().clone()
    }

    /// [`Fleet::rollout_status`]'s row of `region`.
    fn region_status(&self, version: Option<&str>, region: &str) -> serde_json::Value {
        self.rollout_status(version)
            .into_iter()
            .find(|r| r["region"] == region)
            .unwrap()
    }

    /// What a fresh host in `region` would install for `latest`.
    fn resolves_to(&self, region: &str) -> String {
        let repo_like = TestRepo::new(region);
        let mut host = TestHost::new(&repo_like);
        host.source = self.url(region);
        host.trusted_root = self.keys().join("root.json");
        let out = host.update("latest", &["--dry-run", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["plan"]["to"]
            .as_str()
            .or(v["to"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

fn platform() -> Platform {
    Platform::detect().unwrap_or(Platform::LinuxAmd64)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn region_lag_wave_one_first() {
    let f = Fleet::new("1h");
    f.ok(&mut f.publish("1.0.0", &["--regions", "us-east-1,us-west-2,eu-west-1"]));
    f.ok(&mut f.publish("2.0.0", &["--wave", "1"]));
    for r in REGIONS {
        let v = f.verify(r);
        assert!(v.status.success(), "{r}: {}", text(&v));
    }
    assert_eq!(f.resolves_to("us-east-1"), "2.0.0");
    assert_eq!(f.resolves_to("us-west-2"), "1.0.0");
    assert_eq!(f.resolves_to("eu-west-1"), "1.0.0");
    // wave 2 waits for wave 1's bake
    let out = f.publish("2.0.0", &["--wave", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("bakes until"), "{}", text(&out));
    // a region without a repository is an error naming the fix, not an empty bucket
    f.s3.create_bucket("acme-molt-ap-south-1");
    let out = f
        .publish("2.0.0", &["--regions", "ap-south-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("repo init"), "{}", text(&out));
    assert!(
        !f.s3
            .object_path("acme-molt-ap-south-1", "metadata/timestamp.json")
            .exists()
    );
}

#[test]
fn a_killed_publisher_leaves_every_region_verifiable_and_a_rerun_completes() {
    let f = Fleet::new("0s");
    f.ok(&mut f.publish("1.0.0", &["--regions", "us-east-1,us-west-2,eu-west-1"]));
    let all = ["--regions", "us-east-1,us-west-2,eu-west-1"];
    // how long a whole publish takes, to spread the kills over it
    let started = Instant::now();
    f.ok(&mut f.publish("1.5.0", &all));
    let span = started.elapsed().as_millis().max(50) as u64;
    let mut seed = 0x9e37_79b9_u64;
    // Kills that landed mid-publish: new objects in a bucket, its timestamp unchanged.
    let mut mid_publish = 0;
    let bucket_state = |r: &str| {
        let b = f.s3.object_path(&format!("acme-molt-{r}"), "metadata");
        let t = f.s3.object_path(&format!("acme-molt-{r}"), "targets");
        let count = |d: &Path| std::fs::read_dir(d).map(|d| d.count()).unwrap_or(0);
        let ts = std::fs::read(b.join("timestamp.json")).unwrap_or_default();
        (count(&b) + count(&t), ts)
    };
    for round in 0..20 {
        let before: Vec<_> = REGIONS.iter().map(|r| bucket_state(r)).collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Even rounds: SIGKILL from outside at a random instant, into publishes of 2.0.0
        // (after the first of them that completes, these find nothing left to write). Odd
        // rounds: the publisher kills itself right after a random upload (1 to 18; a publish
        // of a new version to three regions makes about 7 per region), so every gap between
        // two writes is hit, timestamp.json's included; each of these publishes a version of
        // its own (1.6.<round>, below 2.0.0), so that it always has every write to make
        // whatever the rounds before it did, and the count below does not depend on where
        // the random instants fell or how loaded the machine is.
        let at = Duration::from_millis(seed % (span * 2));
        let mut cmd = if round % 2 == 1 {
            let mut c = f.publish(&format!("1.6.{round}"), &all);
            c.env("MOLT_TEST_KILL_AFTER_PUTS", (1 + seed % 18).to_string());
            c
        } else {
            f.publish("2.0.0", &all)
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if round % 2 == 0 {
            std::thread::sleep(at);
            let _ = child.kill();
        }
        let _ = child.wait();
        for (r, (files, ts)) in REGIONS.iter().zip(before) {
            let (files_now, ts_now) = bucket_state(r);
            if files_now > files && ts_now == ts {
                mid_publish += 1;
            }
            let v = f.verify(r);
            assert!(
                v.status.success(),
                "round {round} (kill at {at:?}), {r}: {}",
                text(&v)
            );
        }
    }
    eprintln!("kills that landed mid-publish, over 20 rounds: {mid_publish}");
    assert!(
        mid_publish >= 2,
        "only {mid_publish} kills landed between the first upload and timestamp.json (publish takes {span} ms)"
    );
    f.ok(&mut f.publish("2.0.0", &all));
    for r in REGIONS {
        assert_eq!(f.resolves_to(r), "2.0.0", "{r}");
    }
}

#[test]
fn readers_never_see_an_unverifiable_region_during_publishes() {
    let f = Fleet::new("0s");
    f.ok(&mut f.publish("1.0.0", &["--regions", "us-east-1"]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let tool = workspace_bin("release-manifest");
        let url = f.url("us-east-1");
        let root = f.keys().join("root.json");
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new(&tool)
                    .args(["verify", &url, "--region", "us-east-1", "--trusted-root"])
                    .arg(&root)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "a reader saw: {}", text(&out));
                reads += 1;
            }
            reads
        })
    };
    for v in ["2.0.0", "2.1.0", "2.2.0"] {
        f.ok(&mut f.publish(v, &["--regions", "us-east-1"]));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw a broken region");
    assert!(reads >= 3, "only {reads} reads during the publishes");
}

#[test]
fn clobbers_are_refused_and_racing_publishers_lose_nothing() {
    let f = Fleet::new("0s");
    f.ok(&mut f.publish("1.0.0", &["--regions", "us-east-1"]));
    // the same release again is a no-op
    let again = f.ok(&mut f.publish("1.0.0", &["--regions", "us-east-1"]));
    assert!(text(&again).contains("us-east-1"), "{}", text(&again));
    // other bytes under the same version are refused
    let other = f.dir.path().join("dist-other");
    f.ok(f
        .tool()
        .args(["package", "--version", "1.0.0", "--platform"])
        .arg(platform().to_string())
        .arg("--agent")
        .arg(workspace_bin("updater"))
        .arg("--updater")
        .arg(workspace_bin("test-agent"))
        .arg("--out")
        .arg(&other));
    let out = f
        .plan_cmd(&["publish", "--version", "1.0.0", "--regions", "us-east-1"])
        .arg("--dist")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("already published with other bytes")
            || text(&out).contains("immutable"),
        "{}",
        text(&out)
    );
    assert!(f.verify("us-east-1").status.success());

    // Racing publishers, four at once: every one that says it succeeded has its version in
    // the region, and every loser is told that another publisher got there first (never
    // that an object exists "with other bytes", whose hint is --allow-clobber).
    for round in [
        ["3.0.0", "3.1.0", "3.2.0", "3.3.0"],
        ["3.4.0", "3.5.0", "3.6.0", "3.7.0"],
    ] {
        let children: Vec<_> = round
            .iter()
            .map(|v| {
                f.publish(v, &["--regions", "us-east-1"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let versions = f.region_status(None, "us-east-1")["versions"].to_string();
        for (v, o) in round.iter().zip(&outs) {
            if o.status.success() {
                assert!(
                    versions.contains(v),
                    "{v} reported success but is lost: {versions}"
                );
            } else {
                assert!(
                    text(o).contains("another publisher got there first")
                        && !text(o).contains("with other bytes"),
                    "{v}: {}",
                    text(o)
                );
            }
        }
        assert!(
            outs.iter().any(|o| o.status.success()),
            "all refused: {:?}",
            outs.iter().map(text).collect::<Vec<_>>()
        );
        assert!(f.verify("us-east-1").status.success());
    }
}

/// The bucket holds an archive under its content-addressed name with other bytes: one
/// flipped byte stored by a server that checks no checksum on upload (as moto does), or a
/// write behind the publisher's back. The object is corrupt by definition, so the publish
/// puts the right bytes back before any metadata names them, instead of refusing with a
/// hint to --allow-clobber; and a publish run again over a live region with a damaged
/// archive repairs it.
#[test]
fn an_archive_stored_with_other_bytes_is_uploaded_again_before_anything_goes_live() {
    use sha2::Digest as _;
    let f = Fleet::new("0s");
    let east = ["--regions", "us-east-1"];
    f.ok(&mut f.publish("1.0.0", &east));
    let archive_key = |version: &str| {
        let name = format!("molt-agent-{}.tar.gz", platform());
        let path = f.dist(version).join("molt-agent").join(version).join(&name);
        let sha = sha2::Sha256::digest(std::fs::read(&path).unwrap());
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        format!("targets/{hex}.molt-agent-{version}-{}.tar.gz", platform())
    };
    let flip = |key: &str| {
        let path = f.s3.object_path("acme-molt-us-east-1", key);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    };

    // Before 2.0.0 is published, its archive's name already holds other bytes.
    let key = archive_key("2.0.0");
    let planted = f.s3.object_path("acme-molt-us-east-1", &key);
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::copy(
        f.dist("2.0.0")
            .join("molt-agent/2.0.0")
            .join(format!("molt-agent-{}.tar.gz", platform())),
        &planted,
    )
    .unwrap();
    flip(&key);
    let out = f.ok(f.publish("2.0.0", &east).arg("--json"));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let repaired = rows[0]["report"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["key"] == key.as_str() && c["action"] == "repair");
    assert!(repaired, "{rows}");
    let out = f.verify("us-east-1");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.resolves_to("us-east-1"), "2.0.0");

    // A live archive damaged in a bucket whose server keeps no checksum: publishing the
    // release again repairs it.
    flip(&key);
    f.s3.forget_checksums("acme-molt-us-east-1", &key);
    assert!(
        !f.verify("us-east-1").status.success(),
        "the damage is seen"
    );
    let again = f.ok(&mut f.publish("2.0.0", &east));
    assert!(text(&again).contains("unchanged"), "{}", text(&again));
    let out = f.verify("us-east-1");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn rollout_guards_halt_resume_and_recall() {
    // A bake of an hour: the first advance is refused however slow the machine is.
    let f = Fleet::new("1h");
    f.ok(&mut f.publish("1.0.0", &["--regions", "us-east-1,us-west-2,eu-west-1"]));
    f.ok(&mut f.publish("2.0.0", &["--wave", "1"]));
    let advance = |f: &Fleet| {
        f.plan_cmd(&["rollout", "advance", "--version", "2.0.0"])
            .arg("--dist")
            .arg(f.dist("2.0.0"))
            .output()
            .unwrap()
    };
    // before the bake time
    let out = advance(&f);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("bakes until"), "{}", text(&out));
    // From here on the plan says the bake is over, instead of the test waiting for it.
    f.write_plan("0s", "");
    // halted
    f.ok(&mut f.plan_cmd(&[
        "rollout",
        "halt",
        "--version",
        "2.0.0",
        "--reason",
        "error spike",
    ]));
    assert_eq!(
        f.resolves_to("us-east-1"),
        "1.0.0",
        "a halted version is offered to no new host"
    );
    let out = advance(&f);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("halted"), "{}", text(&out));
    f.ok(&mut f.plan_cmd(&["rollout", "resume", "--version", "2.0.0"]));
    // Hosts' reports from wave 1. Each host counts once, by its latest report.
    let report_as = |host: &str, claims: &str, id: &str, result: &str, minute: u32| {
        let key = format!("molt/us-east-1/2.0.0/{host}/{id}.json");
        let path = f.s3.object_path("acme-molt-reports", &key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body = serde_json::json!({
            "schema": 1,
            "host": claims,
            "region": "us-east-1",
            "record": {
                "id": id,
                "to": "2.0.0",
                "result": result,
                "finished_at": format!("2026-12-01T10:{minute:02}:00Z"),
            },
        });
        std::fs::write(&path, body.to_string()).unwrap();
    };
    let report = |host: &str, id: &str, result: &str, minute: u32| {
        report_as(host, host, id, result, minute);
    };
    report("h1", "r1", "success", 1);
    report("h2", "r1", "rolled_back", 2);
    let out = advance(&f);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("1 of 2 hosts' updates failed")
            && text(&out).contains("over the plan's threshold")
            && text(&out)
                .contains("only 2 hosts reported from the earlier waves; the plan wants 10 first"),
        "{}",
        text(&out)
    );
    // One host that can write the sink cannot dilute the failures: thirty reports of its
    // own are one host. Nor can it pose as others: a report whose body names another host
    // than its key, and an oversized one, are skipped unread.
    for n in 0..30 {
        report("h-loud", &format!("r{n}"), "success", 3);
    }
    report_as("h-loud", "h-other", "r-posing", "success", 4);
    let huge =
        f.s3.object_path("acme-molt-reports", "molt/us-east-1/2.0.0/h-huge/r1.json");
    std::fs::create_dir_all(huge.parent().unwrap()).unwrap();
    std::fs::write(&huge, vec![b' '; 100 * 1024]).unwrap();
    let out = advance(&f);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("1 of 3 hosts' updates failed")
            && text(&out).contains("only 3 hosts reported"),
        "{}",
        text(&out)
    );
    // h2 retried and succeeded: its latest report counts, a success.
    report("h2", "r2", "success", 5);
    let out = advance(&f);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        !text(&out).contains("over the plan's threshold")
            && text(&out).contains("only 3 hosts reported"),
        "{}",
        text(&out)
    );
    // Forced past too few reports (a dry run here: nothing is written).
    let out = f.ok(f
        .plan_cmd(&[
            "rollout",
            "advance",
            "--version",
            "2.0.0",
            "--dry-run",
            "--allow-few-reports",
        ])
        .arg("--dist")
        .arg(f.dist("2.0.0")));
    assert!(text(&out).contains("dry-run"), "{}", text(&out));
    assert_eq!(f.resolves_to("us-west-2"), "1.0.0");
    for h in ["h3", "h4", "h5", "h6", "h7", "h8"] {
        report(h, "r1", "success", 6);
    }
    report("h9", "r1", "rolled_back", 7);
    // baked, resumed, 1 failure among 10 hosts: wave 2 goes
    let out = advance(&f);
    assert!(out.status.success(), "{}", text(&out));
    for r in REGIONS {
        assert_eq!(f.resolves_to(r), "2.0.0", "{r}");
    }

    // recall: a host on 2.0.0 moves back to 1.0.0
    let mut host = TestHost::new(&TestRepo::new("eu-west-1"));
    host.source = f.url("eu-west-1");
    host.trusted_root = f.keys().join("root.json");
    let out = host.update("2.0.0", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.ok(&mut f.plan_cmd(&["rollout", "recall", "2.0.0"]));
    let out = host.update("latest", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.assert_healthy().to_string(), "1.0.0");
    for r in f.rollout_status(Some("2.0.0")) {
        assert_eq!(r["status"], "Deprecated", "{r}");
    }
}

#[test]
fn the_fs_backend_publishes_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("buckets");
    let f = Fleet::new("0s");
    std::fs::create_dir_all(root.join("acme-molt-us-east-1")).unwrap();
    let local = f.dir.path().join("init-fs");
    f.ok(f
        .tool()
        .args(["repo", "init", "--region", "us-east-1", "--keys"])
        .arg(f.keys())
        .arg("--out")
        .arg(&local));
    f.ok(f
        .plan_cmd(&["repo", "upload", "--region", "us-east-1"])
        .arg("--repo")
        .arg(&local)
        .arg("--directory")
        .arg(&root));
    let notes = f.dir.path().join("notes-1.0.0.md");
    std::fs::write(&notes, "First release: the agent and its updater.\n").unwrap();
    f.ok(f
        .publish("1.0.0", &["--regions", "us-east-1"])
        .arg("--directory")
        .arg(&root)
        .arg("--notes")
        .arg(&notes));
    // The directory's repository has a record of its own, apart from the buckets'.
    assert!(
        root.join(".molt-record/us-east-1/metadata/timestamp.json")
            .is_file()
    );
    f.ok(f
        .publish("1.1.0", &["--regions", "us-east-1"])
        .arg("--directory")
        .arg(&root));
    // the release feed beside the repository: newest first, dates, status, notes kept
    let feed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("acme-molt-us-east-1/feed.json")).unwrap())
            .unwrap();
    assert_eq!(feed["region"], "us-east-1");
    let versions = feed["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{feed}");
    assert_eq!(versions[0]["version"], "1.1.0");
    assert_eq!(versions[1]["version"], "1.0.0");
    assert_eq!(versions[1]["status"], "Active");
    assert!(versions[1]["published"].is_string(), "{feed}");
    assert_eq!(
        versions[1]["notes"],
        "First release: the agent and its updater.\n"
    );
    assert!(versions[0]["notes"].is_null());
    assert_eq!(versions[0]["platforms"][0], platform().to_string());
    let url = format!("file://{}/", root.join("acme-molt-us-east-1").display());
    let out = f
        .tool()
        .args(["verify", &url, "--region", "us-east-1", "--trusted-root"])
        .arg(f.keys().join("root.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn refresh_and_check_expiry_work_on_the_buckets() {
    let f = Fleet::new("0s");
    f.ok(&mut f.publish("1.0.0", &["--regions", "us-east-1,us-west-2"]));
    // A timestamp that expires soon, from a refresh (no archives, so its own read-back is
    // quick); 8 s leaves that read-back room on a loaded machine. Then wait it out.
    let refreshed = std::time::Instant::now();
    f.ok(f
        .plan_cmd(&["refresh", "--regions", "us-east-1,us-west-2"])
        .args(["--timestamp-expires", "8s"]));
    std::thread::sleep(Duration::from_secs(9).saturating_sub(refreshed.elapsed()));
    let check = |f: &Fleet| {
        f.tool()
            .args([
                "check-expiry",
                "--within",
                "1h",
                "--regions",
                "us-east-1,us-west-2",
                "--plan",
            ])
            .arg(f.plan())
            .output()
            .unwrap()
    };
    let out = check(&f);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("timestamp"), "{}", text(&out));
    assert!(
        !f.verify("us-east-1").status.success(),
        "an expired timestamp must not verify"
    );
    // refresh needs no root key
    std::fs::remove_dir_all(f.keys().join("root")).unwrap();
    f.ok(f
        .plan_cmd(&["refresh", "--regions", "us-east-1,us-west-2"])
        .args(["--timestamp-expires", "1day"]));
    let out = check(&f);
    assert!(out.status.success(), "{}", text(&out));
    for r in ["us-east-1", "us-west-2"] {
        assert!(f.verify(r).status.success(), "{r}");
    }
    // and a publish after it still needs no root key
    f.ok(&mut f.publish("1.1.0", &["--regions", "us-east-1"]));
}

/// The read-back checks each new target by the SHA-256 the server keeps with the object
/// (computed over the bytes it stored, verified against the one the publisher sent), and
/// downloads and hashes the target when the server has none. Bytes that are not the signed
/// ones fail it either way.
#[test]
fn the_read_back_accepts_only_the_signed_bytes_of_each_target() {
    use molt_fetch::s3::S3Signer;
    use molt_publish::publish::{Options, Reader, RegionStore, read_back};
    use molt_publish::store::{Condition, ObjectStore, S3Store, S3StoreConfig};
    use std::sync::Arc;

    let f = Fleet::new("0s");
    let region = "us-east-1";
    let bucket = format!("acme-molt-{region}");
    f.ok(&mut f.publish("1.0.0", &["--regions", region]));
    // The agent's archive, as signed.
    let report = f.ok(f
        .tool()
        .args(["verify", &f.url(region), "--json", "--trusted-root"])
        .arg(f.keys().join("root.json")));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let target = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"].as_str().unwrap().starts_with("molt-agent-1.0.0-"))
        .unwrap()
        .clone();
    let name = target["name"].as_str().unwrap().to_owned();
    let key = format!("targets/{}.{name}", target["sha256"].as_str().unwrap());
    let file = f.s3.object_path(&bucket, &key);
    let signed = std::fs::read(&file).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = S3StoreConfig::new(&bucket, region.parse().unwrap());
    config.endpoint_url = Some(f.s3.endpoint());
    config.credentials = Some(f.s3.credentials_provider());
    let store = Arc::new(rt.block_on(S3Store::new(config)).unwrap());
    let rs = RegionStore {
        region: region.parse().unwrap(),
        store: store.clone(),
        reader: Reader {
            url: f.url(region).parse().unwrap(),
            signer: Some(S3Signer::new(
                f.s3.credentials_provider(),
                region.parse().unwrap(),
            )),
        },
    };
    let opts = Options {
        dry_run: false,
        allow_clobber: false,
        trusted_root: std::fs::read(f.keys().join("root.json")).unwrap(),
        notes: None,
        transport: None,
        record: None,
    };
    let read_back = || rt.block_on(read_back(&rs, &opts, std::slice::from_ref(&name)));
    let stat = || rt.block_on(store.stat(&key)).unwrap().unwrap();

    // As published: the server has the SHA-256 it verified, and it is the signed one.
    assert_eq!(
        stat().sha256.map(|s| s.to_string()).as_deref(),
        target["sha256"].as_str()
    );
    read_back().unwrap();

    // The same bytes written behind the server's back: it has no checksum for them any
    // more, so the target is downloaded and hashed, and passes.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, &signed).unwrap();
    assert_eq!(stat().sha256, None);
    read_back().unwrap();

    // Other bytes of the same length written behind its back: downloaded, and refused.
    let mut other = signed.clone();
    let middle = other.len() / 2;
    other[middle] ^= 0x55;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, &other).unwrap();
    let e = read_back().unwrap_err();
    assert!(e.to_string().contains("read-back"), "{e}");

    // Other bytes uploaded with their own checksum: the server's checksum is not the signed
    // one, and the read-back fails without downloading them.
    rt.block_on(store.put(&key, other.clone(), Condition::None))
        .unwrap();
    assert_ne!(
        stat().sha256.map(|s| s.to_string()).as_deref(),
        target["sha256"].as_str()
    );
    let e = read_back().unwrap_err();
    assert!(
        format!("{e:#}").contains("but the signed target has"),
        "{e:#}"
    );

    // The signed bytes uploaded again: accepted by their checksum.
    rt.block_on(store.put(&key, signed.clone(), Condition::None))
        .unwrap();
    read_back().unwrap();
    assert!(f.verify(region).status.success());
}

/// An operator re-runs the pipeline of a release that was published and then recalled
/// (every day: a failed pipeline, a re-run of an old tag). The same bytes again change
/// nothing: the recalled version stays recalled, no metadata is signed or written, and the
/// output says so. Publishing a new version afterwards keeps the recall too.
#[test]
fn publishing_the_same_release_again_changes_nothing_and_never_undoes_a_recall() {
    let f = Fleet::new("0s");
    // (keys/root.json is public: hosts and verifiers are given it)
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(f.keys().join("root.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let east = ["--regions", "us-east-1"];
    f.ok(&mut f.publish("1.0.0", &east));
    f.ok(&mut f.publish("2.0.0", &east));
    f.ok(&mut f.plan_cmd(&[
        "rollout",
        "halt",
        "--version",
        "2.0.0",
        "--reason",
        "error spike",
    ]));
    f.ok(&mut f.plan_cmd(&["rollout", "recall", "2.0.0"]));
    assert_eq!(f.resolves_to("us-east-1"), "1.0.0");
    let timestamp =
        f.s3.object_path("acme-molt-us-east-1", "metadata/timestamp.json");
    let feed = f.s3.object_path("acme-molt-us-east-1", "feed.json");
    let before = (
        std::fs::read(&timestamp).unwrap(),
        std::fs::read(&feed).unwrap(),
    );
    for run in 0..2 {
        let again = f.ok(&mut f.publish("2.0.0", &east));
        assert!(
            text(&again).contains("unchanged: the region already holds exactly this"),
            "run {run}: {}",
            text(&again)
        );
        assert_eq!(
            (
                std::fs::read(&timestamp).unwrap(),
                std::fs::read(&feed).unwrap()
            ),
            before,
            "run {run}: nothing is written"
        );
        let json = f.ok(f.publish("2.0.0", &east).arg("--json"));
        let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(rows[0]["report"]["unchanged"], true, "{rows}");
        assert_eq!(rows[0]["report"]["uploaded"], 0, "{rows}");
    }
    assert_eq!(f.resolves_to("us-east-1"), "1.0.0", "still recalled");
    assert!(f.verify("us-east-1").status.success());

    // A new release on top keeps the recall of the old one.
    f.ok(&mut f.publish("3.0.0", &east));
    let east_row = f.region_status(Some("2.0.0"), "us-east-1");
    assert_eq!(east_row["status"], "Deprecated", "{east_row}");
}

/// A publisher without credentials (a pipeline whose role was not assumed), off EC2: one
/// clear error that names the fix, and none of the SDK's raw error structures before it.
#[test]
fn a_publisher_without_credentials_gets_one_clear_message() {
    let f = Fleet::new("0s");
    let home = tempfile::tempdir().unwrap();
    // An IMDS that takes connections and never answers, as a firewall off EC2 does.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // And one that refuses, as a proxy or an instance with IMDS turned off does (403 to the
    // token request): aws-config logged a WARN with its raw error structure for that.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for stream in refusing.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 9\r\nconnection: close\r\n\r\nforbidden",
            );
        }
    });
    for imds in [
        format!("http://{}", silent.local_addr().unwrap()),
        format!("http://{refusing_addr}"),
    ] {
        let mut c = f.plan_cmd(&["publish", "--version", "1.0.0", "--regions", "us-east-1"]);
        c.arg("--dist").arg(f.dist("1.0.0"));
        for (k, _) in f.s3.env_for_credentials() {
            if k != "AWS_ENDPOINT_URL_S3" && k != "AWS_REGION" {
                c.env_remove(k);
            }
        }
        c.env_remove("AWS_EC2_METADATA_DISABLED")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_CONFIG_FILE")
            .env("HOME", home.path())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds);
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{imds}: {}", text(&out));
        assert!(
            !stderr.contains("WARN") && !stderr.contains("Error {") && !stderr.contains("source:"),
            "{imds}: {}",
            text(&out)
        );
        assert!(text(&out).contains("credentials"), "{imds}: {}", text(&out));
    }
}

impl Fleet {
    /// A bucket writer without the keys: a PUT of `bytes` at `key` with the real S3 client.
    fn put_behind_the_publishers_back(&self, region: &str, key: &str, bytes: Vec<u8>) {
        self.put_in_bucket(&format!("acme-molt-{region}"), region, key, bytes);
    }

    fn put_in_bucket(&self, bucket: &str, region: &str, key: &str, bytes: Vec<u8>) {
        use molt_publish::store::{Condition, ObjectStore, S3Store, S3StoreConfig};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut config = S3StoreConfig::new(bucket, region.parse().unwrap());
        config.endpoint_url = Some(self.s3.endpoint());
        config.credentials = Some(self.s3.credentials_provider());
        rt.block_on(async {
            let store = S3Store::new(config).await.unwrap();
            store.put(key, bytes, Condition::None).await.unwrap();
        });
    }

    fn timestamp(&self, region: &str) -> Vec<u8> {
        std::fs::read(
            self.s3
                .object_path(&format!("acme-molt-{region}"), "metadata/timestamp.json"),
        )
        .unwrap()
    }

    fn refused(&self, c: &mut Command) -> String {
        let out = c.output().unwrap();
        assert!(
            !out.status.success(),
            "{c:?} must be refused:\n{}",
            text(&out)
        );
        text(&out)
    }
}

/// Someone who can write the bucket but holds no key puts back the signed set from before a
/// recall. A fresh host cannot tell (it is validly signed), so the publisher must: every
/// command that signs refuses, the region is left as it is, and `record restore` puts the
/// recall back.
#[test]
fn an_older_signed_set_put_back_into_the_bucket_is_refused_by_every_signing_command_and_restored() {
    let f = Fleet::new("0s");
    let east = ["--regions", "us-east-1"];
    f.ok(&mut f.publish("1.0.0", &east));
    f.ok(&mut f.publish("2.0.0", &east));
    let before_the_recall = f.timestamp("us-east-1");
    f.ok(&mut f.plan_cmd(&["rollout", "recall", "2.0.0"]));
    assert_eq!(f.resolves_to("us-east-1"), "1.0.0");
    let recalled = f.timestamp("us-east-1");
    let west = f.timestamp("us-west-2");

    f.put_behind_the_publishers_back(
        "us-east-1",
        "metadata/timestamp.json",
        before_the_recall.clone(),
    );
    assert_eq!(
        f.resolves_to("us-east-1"),
        "2.0.0",
        "a host with no memory of the region is fooled; only the publisher can catch it"
    );

    let mut publish = f.publish("3.0.0", &east);
    let mut refresh = f.plan_cmd(&["refresh", "--regions", "us-east-1"]);
    let mut halt = f.plan_cmd(&["rollout", "halt", "--version", "2.0.0", "--reason", "again"]);
    let mut recall = f.plan_cmd(&["rollout", "recall", "2.0.0"]);
    let mut resume = f.plan_cmd(&["rollout", "resume", "--version", "2.0.0"]);
    let mut dry_run = f.publish("3.0.0", &east);
    dry_run.arg("--dry-run");
    for (what, cmd) in [
        ("publish", &mut publish),
        ("refresh", &mut refresh),
        ("halt", &mut halt),
        ("recall", &mut recall),
        ("resume", &mut resume),
        ("publish --dry-run", &mut dry_run),
    ] {
        let out = f.refused(cmd);
        assert!(
            out.contains("refusing to sign us-east-1")
                && out.contains("older signed metadata than this publisher last signed")
                && out.contains("record restore --region us-east-1"),
            "{what}: {out}"
        );
        assert_eq!(
            f.timestamp("us-east-1"),
            before_the_recall,
            "{what}: unchanged"
        );
    }
    assert_eq!(
        f.timestamp("us-west-2"),
        west,
        "other regions are not touched"
    );

    // The repair: the remembered files go back, and hosts see the recall again.
    let out = f.ok(&mut f.plan_cmd(&["record", "restore", "--regions", "us-east-1", "--dry-run"]));
    assert!(text(&out).contains("dry-run"), "{}", text(&out));
    assert_eq!(
        f.timestamp("us-east-1"),
        before_the_recall,
        "a dry run writes nothing"
    );
    f.ok(&mut f.plan_cmd(&["record", "restore", "--regions", "us-east-1"]));
    assert_eq!(f.timestamp("us-east-1"), recalled);
    assert_eq!(f.resolves_to("us-east-1"), "1.0.0");
    assert!(f.verify("us-east-1").status.success());
    // Every region, again: nothing more to restore anywhere.
    let again = f.ok(&mut f.plan_cmd(&["record", "restore", "--json"]));
    let rows: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    for row in rows.as_array().unwrap() {
        assert_eq!(row["report"]["unchanged"], true, "{row}");
        assert_eq!(row["report"]["uploaded"], 0, "{row}");
    }

    // Publishing goes on from the recall, which holds.
    f.ok(&mut f.publish("3.0.0", &east));
    let row = f.region_status(Some("2.0.0"), "us-east-1");
    assert_eq!(row["status"], "Deprecated", "{row}");

    // Metadata signed with other keys (a repository of the bucket writer's own) is not
    // signed on top of either, whatever the bucket's own root says; restore puts ours back.
    let theirs = f.dir.path().join("their-keys");
    f.ok(f.tool().args(["keys", "generate", "--out"]).arg(&theirs));
    let their_repo = f.dir.path().join("their-repo");
    f.ok(f
        .tool()
        .args(["repo", "init", "--region", "us-west-2", "--keys"])
        .arg(&theirs)
        .arg("--out")
        .arg(&their_repo));
    for key in ["metadata/1.root.json", "metadata/timestamp.json"] {
        let bytes = std::fs::read(their_repo.join(key)).unwrap();
        f.put_behind_the_publishers_back("us-west-2", key, bytes);
    }
    let out = f.refused(&mut f.plan_cmd(&["refresh", "--regions", "us-west-2"]));
    assert!(
        out.contains("metadata for us-west-2 does not verify against the trusted root")
            && out.contains("record restore --region us-west-2"),
        "{out}"
    );
    f.ok(&mut f.plan_cmd(&["record", "restore", "--regions", "us-west-2"]));
    assert_eq!(f.timestamp("us-west-2"), west);
    assert!(f.verify("us-west-2").status.success());
    f.ok(&mut f.plan_cmd(&["refresh", "--regions", "us-west-2"]));

    // Only the root chain changed (new hosts start from 1.root.json): refused too, and
    // restored, though every version is the record's.
    let eu = f.timestamp("eu-west-1");
    let their_root = std::fs::read(their_repo.join("metadata/1.root.json")).unwrap();
    f.put_behind_the_publishers_back("eu-west-1", "metadata/1.root.json", their_root);
    let out = f.refused(&mut f.plan_cmd(&["refresh", "--regions", "eu-west-1"]));
    assert!(
        out.contains("the bucket's root chain is not the one this publisher signed"),
        "{out}"
    );
    assert_eq!(f.timestamp("eu-west-1"), eu);
    let out = f.ok(&mut f.plan_cmd(&["record", "restore", "--regions", "eu-west-1"]));
    assert!(
        text(&out).contains("Repair metadata/1.root.json"),
        "{}",
        text(&out)
    );
    f.ok(&mut f.plan_cmd(&["refresh", "--regions", "eu-west-1"]));
}

/// With no record of a region (a pipeline run from a fresh checkout that lost it), nothing
/// is signed until an operator names the bucket's state once; naming another state, or an
/// older one than the record, is refused. The record lives beside the plan however the plan
/// is named, or where `--record` says.
#[test]
fn without_a_record_the_publisher_refuses_until_an_operator_names_the_state_once() {
    let f = Fleet::new("0s");
    let east = ["--regions", "us-east-1"];
    f.ok(&mut f.publish("1.0.0", &east));
    let record = f.dir.path().join("published");
    assert!(record.join("us-east-1/metadata/timestamp.json").is_file());
    let moved = f.dir.path().join("kept-elsewhere");
    std::fs::rename(&record, &moved).unwrap();

    let held = f.timestamp("us-east-1");
    let out = f.refused(&mut f.publish("2.0.0", &east));
    assert!(
        out.contains("no record of what this publisher last signed for us-east-1"),
        "{out}"
    );
    let named = out
        .split("--timestamp-version ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("the hint names the version to adopt: {out}"));
    let out = f.refused(&mut f.plan_cmd(&["refresh", "--regions", "us-east-1"]));
    assert!(out.contains("record adopt --region us-east-1"), "{out}");
    assert_eq!(f.timestamp("us-east-1"), held, "nothing was signed");

    // A pipeline that names its record explicitly is protected by it.
    let out = f.ok(f.publish("2.0.0", &east).arg("--record").arg(&moved));
    assert!(text(&out).contains("ok"), "{}", text(&out));
    assert!(moved.join("us-east-1/metadata/timestamp.json").is_file());
    let newer = f.timestamp("us-east-1");

    // Naming a state the bucket does not hold, or no number, is refused.
    let adopt = |n: &str| {
        f.plan_cmd(&[
            "record",
            "adopt",
            "--region",
            "us-east-1",
            "--timestamp-version",
            n,
        ])
    };
    let out = f.refused(&mut adopt(&named.to_string()));
    assert!(out.contains(&format!("not the {named} named")), "{out}");
    let out = f.refused(&mut adopt("latest"));
    assert!(out.contains("--timestamp-version"), "{out}");

    // Relative paths, run from the plan's directory, the record typed with a trailing
    // slash: the same `published/` the default names.
    let version: serde_json::Value = serde_json::from_slice(&newer).unwrap();
    let holds = version["signed"]["version"].as_u64().unwrap().to_string();
    let mut relative = f.tool();
    relative.current_dir(f.dir.path()).args([
        "record",
        "adopt",
        "--plan",
        "rollout.toml",
        "--record",
        "published/",
        "--keys",
        "keys",
        "--region",
        "us-east-1",
        "--timestamp-version",
        &holds,
    ]);
    f.ok(&mut relative);
    assert!(record.join("us-east-1/metadata/timestamp.json").is_file());
    f.ok(&mut f.publish("3.0.0", &east));
    assert_eq!(f.resolves_to("us-east-1"), "3.0.0");

    // Adopting an older state than the record (the bucket rolled back) is refused too.
    f.put_behind_the_publishers_back("us-east-1", "metadata/timestamp.json", held.clone());
    let out = f.refused(&mut adopt(&named.to_string()));
    assert!(out.contains("older signed metadata"), "{out}");
    f.ok(&mut f.plan_cmd(&["record", "restore", "--regions", "us-east-1"]));
    assert_eq!(f.resolves_to("us-east-1"), "3.0.0");
}

/// `verify` reads a private bucket over `s3://` with SigV4 (its plain-HTTP 403 reads as not
/// found, and the message says the bucket may be private), and with `--state` remembers
/// what it saw, so a validly signed rollback fails as it does on a host.
#[test]
fn verify_reads_a_private_bucket_over_s3_and_with_state_catches_a_rollback() {
    let f = Fleet::new("0s");
    f.s3.create_bucket("private-molt-us-east-1");
    let private = f.dir.path().join("private");
    std::fs::create_dir_all(&private).unwrap();
    let plan = private.join("rollout.toml");
    std::fs::write(
        &plan,
        format!(
            "bucket = \"private-molt-{{region}}\"\nendpoint_url = \"{}\"\n[[wave]]\nregions = [\"us-east-1\"]\nbake = \"0s\"\n",
            f.s3.endpoint()
        ),
    )
    .unwrap();
    let on_private = |args: &[&str]| {
        let mut c = f.tool();
        c.args(args)
            .arg("--plan")
            .arg(&plan)
            .arg("--keys")
            .arg(f.keys());
        c
    };
    let init = f.dir.path().join("init-private");
    f.ok(f
        .tool()
        .args(["repo", "init", "--region", "us-east-1", "--keys"])
        .arg(f.keys())
        .arg("--out")
        .arg(&init));
    f.ok(on_private(&["repo", "upload", "--region", "us-east-1"])
        .arg("--repo")
        .arg(&init));
    let publish = |version: &str| {
        f.ok(
            on_private(&["publish", "--version", version, "--regions", "us-east-1"])
                .arg("--dist")
                .arg(f.dist(version)),
        );
    };
    publish("1.0.0");
    let root = f.keys().join("root.json");
    let verify = |source: &str, extra: &[&str]| {
        let mut c = f.tool();
        c.args(["verify", source, "--trusted-root"])
            .arg(&root)
            .args(extra)
            .output()
            .unwrap()
    };
    let endpoint = f.s3.endpoint();
    let signed = ["--region", "us-east-1", "--endpoint-url", endpoint.as_str()];

    // Over plain HTTP: 403, read as not found; the message says why that may be.
    let out = verify(&format!("{endpoint}/private-molt-us-east-1/"), &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("was not found") && text(&out).contains("a private bucket answers 403"),
        "{}",
        text(&out)
    );
    // Over s3://, signed: verified, with or without the trailing slash.
    for source in [
        "s3://private-molt-us-east-1/",
        "s3://private-molt-us-east-1",
    ] {
        let out = verify(source, &signed);
        assert!(out.status.success(), "{source}: {}", text(&out));
        assert!(text(&out).contains("verified"), "{}", text(&out));
    }
    let out = verify("s3://private-molt-us-east-1/", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("needs --region"), "{}", text(&out));
    let out = verify("s3://", &signed);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // Wrong keys: refused by the server, and said so.
    let out = f
        .tool()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["verify", "s3://private-molt-us-east-1/", "--trusted-root"])
        .arg(&root)
        .args(signed)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));

    // With --state: remembers, and a rollback fails as on a host.
    let state = f.dir.path().join("verify-state");
    let state_arg = state.to_str().unwrap();
    let old = std::fs::read(f.s3.object_path("private-molt-us-east-1", "metadata/timestamp.json"))
        .unwrap();
    let with_state = [&signed[..], &["--state", state_arg]].concat();
    let out = verify("s3://private-molt-us-east-1/", &with_state);
    assert!(out.status.success(), "{}", text(&out));
    publish("2.0.0");
    let out = verify("s3://private-molt-us-east-1/", &with_state);
    assert!(out.status.success(), "{}", text(&out));
    f.put_in_bucket(
        "private-molt-us-east-1",
        "us-east-1",
        "metadata/timestamp.json",
        old,
    );
    let out = verify("s3://private-molt-us-east-1/", &signed);
    assert!(
        out.status.success(),
        "without state the rollback passes: {}",
        text(&out)
    );
    let out = verify("s3://private-molt-us-east-1/", &with_state);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("rollback refused"), "{}", text(&out));
    // --state needs the region its datastore is for.
    let out = verify("s3://private-molt-us-east-1/", &["--state", state_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // …and the trusted root: a root taken from the source each time could start a new chain.
    let out = f
        .tool()
        .args([
            "verify",
            "s3://private-molt-us-east-1/",
            "--state",
            state_arg,
        ])
        .args(signed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--trusted-root"), "{}", text(&out));
}
