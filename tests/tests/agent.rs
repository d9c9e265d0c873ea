//! The real agent binary: config errors, the association launching the real updater,
//! hold, signals, recovery at start-up, systemd-run, status and diagnose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use molt_host::state::{self, HealthStatus};
use molt_tests::agent_host::AgentHost;
use molt_tests::fixture::{TestRepo, pid_alive, stamped_build, wait_for, workspace_bin};
use molt_tests::imds::{ImdsConfig, ImdsRole, ImdsServer};
use molt_tests::s3::S3Server;

fn sigterm(pid: u32) {
    let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::TERM).unwrap();
}

fn sighup(pid: u32) {
    let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::HUP).unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_errors_name_the_key_and_line_and_start_nothing() {
    let agent = workspace_bin("agent");
    let cases = [
        ("[agent]\nschedul = \"rate(1 day)\"\n", "schedul", "line 3"),
        ("[agent]\njitter = \"5 parsecs\"\n", "jitter", "line 3"),
        (
            "[agent]\nschedule = \"cron(61 * * * *)\"\n",
            "schedule",
            "line 3",
        ),
        (
            "[agent]\nschedule = \"rate(0 days)\"\n",
            "schedule",
            "line 3",
        ),
        ("regoin = \"us-east-1\"\n", "regoin", "line 2"),
    ];
    for (text, key, line) in cases {
        let host = AgentHost::new();
        host.write_config(text);
        let out = host.agent(&agent).arg("run").output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(key) && err.contains(line), "{text}: {err}");
        assert!(err.contains("hint:"), "{err}");
        assert!(
            !host.layout().health().exists(),
            "no agent may start on {text}"
        );
    }
    // an explicit config that does not exist
    let host = AgentHost::new();
    let out = host.agent(&agent).arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn health_first_sigterm_stops_and_sighup_reloads() {
    let agent = workspace_bin("agent");
    let mut host = AgentHost::new();
    host.write_config("region = \"us-east-1\"\n[agent]\nschedule = \"rate(14 days)\"\n");
    let pid = host.start(&agent, &[("MOLT_HEALTH_NONCE", "n-123")]);
    let h = host.wait_ready(pid);
    assert_eq!(h.nonce, "n-123");
    assert_eq!(h.version.to_string(), molt_host::build::version());

    // a good new config is taken
    host.write_config("region = \"us-east-1\"\n[agent]\nschedule = \"cron(0 3 * * *)\"\n");
    sighup(pid);
    assert!(
        wait_for(Duration::from_secs(5), || host
            .log()
            .contains("SIGHUP: reloaded")
            .then_some(()))
        .is_some(),
        "{}",
        host.log()
    );
    // a bad one is refused, and the agent keeps running
    host.write_config("[agent]\nschedule = \"every tuesday\"\n");
    sighup(pid);
    assert!(
        wait_for(Duration::from_secs(5), || host
            .log()
            .contains("keeping the running one")
            .then_some(()))
        .is_some(),
        "{}",
        host.log()
    );
    assert!(pid_alive(pid));

    sigterm(pid);
    let child = host.children.iter_mut().find(|c| c.id() == pid).unwrap();
    let status = wait_for(Duration::from_secs(5), || child.try_wait().unwrap())
        .expect("agent exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(host.health().unwrap().status, HealthStatus::Stopping);
}

/// A fake updater that records each launch (arguments and environment) and exits.
fn recording_updater(dir: &Path) -> PathBuf {
    let path = dir.join("bin").join("updater");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let log = dir.join("launches.log");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'updater 0.0.1'; exit 0; }}\necho \"$* root=$MOLT_ROOT config=$MOLT_CONFIG nonce=${{MOLT_HEALTH_NONCE:-none}}\" >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `state/last-launch.json`, which the agent writes once the launch has returned (the
/// launched program may have run before that).
fn last_launch(host: &AgentHost) -> serde_json::Value {
    wait_for(Duration::from_secs(5), || {
        let bytes = std::fs::read(host.root().join("agent/last-launch.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    })
    .expect("the agent records its launch")
}

fn launches(host: &AgentHost) -> Vec<String> {
    std::fs::read_to_string(host.root().join("launches.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn schedule_launches_the_updater_detached_and_hold_stops_it() {
    let agent = workspace_bin("agent");
    let mut host = AgentHost::new();
    recording_updater(&host.root());
    host.write_config(
        "region = \"us-east-1\"\n[updater]\nservice = \"direct\"\n[agent]\nschedule = \"rate(1 second)\"\njitter = \"0s\"\n",
    );
    let pid = host.start(&agent, &[("MOLT_HEALTH_NONCE", "secret-nonce")]);
    host.wait_ready(pid);
    let first = wait_for(Duration::from_secs(10), || launches(&host).first().cloned())
        .unwrap_or_else(|| panic!("no launch; log:\n{}", host.log()));
    assert!(first.starts_with("--target-version latest"), "{first}");
    assert!(
        first.contains(&format!("root={}", host.root().display())),
        "{first}"
    );
    assert!(
        first.contains(&format!("config={}", host.config().display())),
        "{first}"
    );
    assert!(
        first.contains("nonce=none"),
        "the agent's nonce must not leak: {first}"
    );
    let launch = last_launch(&host);
    assert_eq!(launch["kind"], "update");
    assert!(launch["pid"].as_u64().is_some());
    assert!(launch["error"].is_null());

    // `agent hold`: no more launches; status says so
    let out = host
        .agent(&agent)
        .arg("hold")
        .args(["--reason", "change freeze"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(1500));
    let held_at = launches(&host).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        launches(&host).len(),
        held_at,
        "a held host launches nothing"
    );
    assert!(host.log().contains("on hold"), "{}", host.log());
    let status = host.status_json(&agent);
    assert_eq!(status["hold"]["by"], "command");
    assert_eq!(status["hold"]["reason"], "change freeze");

    let out = host.agent(&agent).arg("unhold").output().unwrap();
    assert!(out.status.success());
    assert!(
        wait_for(Duration::from_secs(10), || (launches(&host).len()
            > held_at)
            .then_some(()))
        .is_some(),
        "unhold lets the schedule run again"
    );
}

#[test]
fn hold_in_the_config_holds() {
    let agent = workspace_bin("agent");
    let mut host = AgentHost::new();
    recording_updater(&host.root());
    host.write_config(
        "region = \"us-east-1\"\n[updater]\nservice = \"direct\"\n[agent]\nschedule = \"rate(1 second)\"\njitter = \"0s\"\nhold = true\n",
    );
    let pid = host.start(&agent, &[]);
    host.wait_ready(pid);
    std::thread::sleep(Duration::from_secs(3));
    assert!(launches(&host).is_empty(), "{:?}", launches(&host));
    let out = host.agent(&agent).arg("unhold").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("hold = true"));
}

#[test]
fn unfinished_journal_at_start_launches_recover() {
    let agent = workspace_bin("agent");
    let mut host = AgentHost::new();
    recording_updater(&host.root());
    host.write_config("region = \"us-east-1\"\n[updater]\nservice = \"direct\"\n");
    let journal = serde_json::json!({
        "version": 1, "id": "j-1", "from": "1.0.0", "to": "2.0.0", "step": "switched",
        "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    });
    std::fs::create_dir_all(host.root().join("state")).unwrap();
    std::fs::write(host.root().join("state/journal.json"), journal.to_string()).unwrap();
    let pid = host.start(&agent, &[]);
    host.wait_ready(pid);
    let first = wait_for(Duration::from_secs(10), || launches(&host).first().cloned())
        .unwrap_or_else(|| panic!("no launch; log:\n{}", host.log()));
    assert!(first.starts_with("recover"), "{first}");
}

#[test]
fn systemd_mode_launches_through_systemd_run() {
    let agent = workspace_bin("agent");
    let mut host = AgentHost::new();
    let updater = recording_updater(&host.root());
    let fake_bin = host.dir.path().join("fake-bin");
    std::fs::create_dir_all(&fake_bin).unwrap();
    let calls = host.dir.path().join("systemd-run.log");
    std::fs::write(
        fake_bin.join("systemd-run"),
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", calls.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        fake_bin.join("systemd-run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    host.write_config(
        "region = \"us-east-1\"\n[updater]\nservice = \"systemd\"\n[agent]\nschedule = \"rate(1 second)\"\njitter = \"0s\"\n",
    );
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let pid = host.start(&agent, &[("PATH", &path)]);
    host.wait_ready(pid);
    let call = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&calls)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
    })
    .unwrap_or_else(|| panic!("systemd-run never ran; log:\n{}", host.log()));
    assert!(call.contains("--unit=molt-update-"), "{call}");
    assert!(call.contains("--collect"), "{call}");
    assert!(
        call.contains(&format!("--setenv=MOLT_ROOT={}", host.root().display())),
        "{call}"
    );
    assert!(
        call.contains(&format!("-- {} --target-version latest", updater.display())),
        "{call}"
    );
    let launch = last_launch(&host);
    assert!(launch["unit"].as_str().unwrap().starts_with("molt-update-"));
    // the transient unit's updater gets the launch id it records its result under
    let id = launch["id"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(&calls)
            .unwrap()
            .contains(&format!("--setenv=MOLT_LAUNCH_ID={id} ")),
        "{call}"
    );
    assert!(launch["error"].is_null(), "{launch}");
}

/// The real thing: a real agent (v1) on a one-second schedule launches the real updater,
/// which moves the host to a real agent v2; `agent status --json` then shows v2 and the
/// history record.
#[test]
fn agent_updates_itself_from_v1_to_v2() {
    let v1 = stamped_build("1.0.0");
    let v2 = stamped_build("2.0.0");
    let repo = TestRepo::new("us-east-1");
    repo.publish_programs("1.0.0", &v1.join("agent"), &v1.join("updater"));
    let s3 = S3Server::start();
    s3.create_bucket("molt-reports");
    let host = AgentHost::new();
    host.write_config(&format!(
        "region = \"us-east-1\"\nsource = \"{}\"\ntrusted_root = \"{}\"\n\
         [updater]\nservice = \"direct\"\nsoak = \"500ms\"\nhealth_timeout = \"20s\"\n\
         [agent]\nschedule = \"rate(1 second)\"\njitter = \"0s\"\n\
         report = \"s3://molt-reports/fleet/\"\npoll = \"1s\"\n",
        repo.url(),
        repo.trusted_root().display()
    ));
    // first install of v1 through the updater; it starts the v1 agent (direct mode)
    let out = host
        .agent(&v1.join("updater"))
        .args(["--target-version", "1.0.0"])
        .envs(s3.env_for_credentials())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let layout = host.layout();
    assert_eq!(layout.current_version().unwrap().to_string(), "1.0.0");
    let agent_v1 = layout.current_link().join("bin/agent");
    let status = host.status_json(&agent_v1);
    assert_eq!(status["installed"], "1.0.0");

    repo.publish_programs("2.0.0", &v2.join("agent"), &v2.join("updater"));
    let record = wait_for(Duration::from_secs(90), || {
        state::read_history(&layout.history())
            .ok()?
            .into_iter()
            .find(|r| r.to.to_string() == "2.0.0")
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent never moved to 2.0.0; updater log:\n{}",
            std::fs::read_to_string(layout.agent_dir().join("updater.log")).unwrap_or_default()
        )
    });
    assert_eq!(record.result, state::Outcome::Success, "{record:?}");
    assert_eq!(layout.current_version().unwrap().to_string(), "2.0.0");

    let agent_v2 = layout.current_link().join("bin/agent");
    // The updater that started v2 had re-exec'd itself after its self-update; the agent
    // must not inherit that mark, or no updater it launches would self-update again.
    let pid = host.health().unwrap().pid;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !environ
            .split(|&b| b == 0)
            .any(|kv| kv.starts_with(b"MOLT_UPDATER_REEXEC=")),
        "the v2 agent inherited MOLT_UPDATER_REEXEC"
    );
    let status = host.status_json(&agent_v2);
    assert_eq!(status["agent_version"], "2.0.0");
    assert_eq!(status["installed"], "2.0.0");
    assert_eq!(status["running"]["version"], "2.0.0");
    assert_eq!(status["running"]["alive"], true);
    assert_eq!(status["last_update"]["to"], "2.0.0");
    assert_eq!(status["last_update"]["from"], "1.0.0");
    assert_eq!(status["last_update"]["result"], "success");
    assert_eq!(status["region"]["region"], "us-east-1");
    assert_eq!(status["region"]["source"], "config");
    assert_eq!(status["trust"]["root_version"], 1);
    assert_eq!(status["wave"]["latest"], "2.0.0");
    // the v2 agent reported the record to the results sink, once, under its region,
    // version and host id
    let host_id = std::fs::read_to_string(layout.agent_dir().join("host-id")).unwrap();
    let key = format!(
        "fleet/us-east-1/2.0.0/{}/{}.json",
        host_id.trim(),
        record.id
    );
    let object = s3.object_path("molt-reports", &key);
    wait_for(Duration::from_secs(20), || object.exists().then_some(())).unwrap_or_else(|| {
        panic!(
            "no report at {key}; agent log:\n{}",
            std::fs::read_to_string(layout.agent_log()).unwrap_or_default()
        )
    });
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&object).unwrap()).unwrap();
    assert_eq!(report["host"], host_id.trim());
    assert_eq!(report["region"], "us-east-1");
    assert_eq!(report["agent_version"], "2.0.0");
    assert_eq!(report["record"]["to"], "2.0.0");
    assert_eq!(report["record"]["result"], "success");
    // The v2 agent, which the update started, settled the run the v1 agent launched (its
    // result came back through state/last-run.json): no failed attempt, no retry.
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(layout.agent_log())
            .ok()?
            .contains("the scheduled update finished")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the v2 agent never settled the launched run; agent log:\n{}",
            std::fs::read_to_string(layout.agent_log()).unwrap_or_default()
        )
    });
    let sched = schedule_json(&host);
    assert!(sched["attempts"].is_null(), "{sched}");
    assert!(sched["retry_at"].is_null(), "{sched}");
    // the self-update moved the standalone updater too
    let out = Command::new(layout.updater_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "updater 2.0.0");
}

#[test]
fn status_takes_region_and_credentials_from_imds() {
    let agent = workspace_bin("agent");
    let imds = ImdsServer::start(
        ImdsConfig::new("eu-west-1", "i-0123456789abcdef0").with_role(ImdsRole {
            name: "molt-host".into(),
            access_key_id: "ASIAIMDSEXAMPLE".into(),
            secret_access_key: "imds-secret-not-shown".into(),
            token: "imds-token".into(),
        }),
    )
    .unwrap();
    let host = AgentHost::new();
    host.write_config("[agent]\nschedule = \"rate(1 day)\"\n");
    let (k, v) = imds.env();
    let out = host
        .agent(&agent)
        .args(["status", "--json"])
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env(k, v)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("imds-secret-not-shown"), "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["region"]["region"], "eu-west-1", "{text}");
    assert_eq!(status["region"]["source"], "imds");
    assert_eq!(status["credentials"], "instance_profile", "{text}");

    // the environment beats IMDS for both
    let out = host
        .agent(&agent)
        .args(["status", "--json"])
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env(k, imds.endpoint())
        .env("AWS_REGION", "ap-southeast-2")
        .env("AWS_ACCESS_KEY_ID", "AKIAENVEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "env-secret")
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["region"]["region"], "ap-southeast-2");
    assert_eq!(status["region"]["source"], "environment");
    assert_eq!(status["credentials"], "environment");
}

#[test]
fn diagnose_names_the_fix_when_imds_is_unreachable() {
    let agent = workspace_bin("agent");
    // a port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let host = AgentHost::new();
    host.write_config("[agent]\nschedule = \"rate(1 day)\"\n");
    let out = host
        .agent(&agent)
        .arg("diagnose")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let region_line = text
        .lines()
        .skip_while(|l| !l.contains("region"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        region_line.contains("[FAIL]") && region_line.contains("IMDS unreachable"),
        "{text}"
    );
    assert!(region_line.contains("set `region`"), "{text}");
    assert!(text.contains("[FAIL] install"), "{text}");
}

#[test]
fn missed_runs_run_once_at_start_and_boot_runs_after_their_delay() {
    let agent = workspace_bin("agent");
    // The host was off for 30 days across two slots of rate(14 days): one run at start.
    let mut host = AgentHost::new();
    recording_updater(&host.root());
    host.write_config(
        "region = \"us-east-1\"\n[updater]\nservice = \"direct\"\n[agent]\nschedule = \"rate(14 days)\"\njitter = \"0s\"\n",
    );
    last_ran_30_days_ago(&host);
    let pid = host.start(&agent, &[]);
    host.wait_ready(pid);
    wait_for(Duration::from_secs(10), || {
        (!launches(&host).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no catch-up run; log:\n{}", host.log()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(launches(&host).len(), 1, "one run, not one per missed slot");
    assert_eq!(last_launch(&host)["reason"], "missed");
    let status = host.status_json(&agent);
    let next: jiff::Timestamp = status["schedule"]["next_run"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // the next slot of the original cadence (anchored at first start), not another catch-up
    let now = jiff::Timestamp::now();
    assert!(
        next > now + jiff::SignedDuration::from_hours(24)
            && next <= now + jiff::SignedDuration::from_hours(24 * 14),
        "{next}"
    );

    // A fresh host with on_boot: one run a second after start, then the schedule.
    let mut host = AgentHost::new();
    recording_updater(&host.root());
    host.write_config(
        "region = \"us-east-1\"\n[updater]\nservice = \"direct\"\n[agent]\nschedule = \"rate(14 days)\"\non_boot = true\non_boot_delay = \"1s\"\n",
    );
    let pid = host.start(&agent, &[]);
    host.wait_ready(pid);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        launches(&host).is_empty(),
        "the boot run waits for its delay"
    );
    wait_for(Duration::from_secs(10), || {
        (!launches(&host).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no boot run; log:\n{}", host.log()));
    assert_eq!(last_launch(&host)["reason"], "boot");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(launches(&host).len(), 1);
}

/// A zombie (an agent that exited and was not reaped yet) is not reported as alive.
#[test]
fn status_does_not_call_a_zombie_alive() {
    let agent = workspace_bin("agent");
    let host = AgentHost::new();
    host.write_config("region = \"us-east-1\"\n");
    // A child of this test that exits and is never waited for is a zombie.
    let mut zombie = std::process::Command::new("true").spawn().unwrap();
    let pid = zombie.id();
    assert!(
        wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .filter(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
        })
        .is_some(),
        "the child did not become a zombie"
    );
    let health = molt_host::state::Health {
        schema: molt_host::state::STATE_VERSION,
        version: "1.0.0".parse().unwrap(),
        pid,
        nonce: "n".into(),
        started_at: jiff::Timestamp::now(),
        status: molt_host::state::HealthStatus::Ready,
    };
    molt_host::state::write_json(&host.layout().health(), &health).unwrap();
    let status = host.status_json(&agent);
    assert_eq!(status["running"]["pid"], pid);
    assert_eq!(status["running"]["alive"], false, "{status}");
    zombie.wait().unwrap();
}

/// `state/agent.log` on a full disk: every log line the agent writes fails with ENOSPC.
/// `/dev/full` does exactly that to every write. The agent must keep running and report
/// ready (it panicked on its first log line: tracing reported the failed write with
/// `eprintln!` to the same stderr), and the updater must exit with its own code, not a
/// panic's 101.
#[test]
fn output_that_cannot_be_written_stops_neither_binary() {
    let agent = workspace_bin("agent");
    let mut host = AgentHost::new();
    host.write_config("[agent]\nschedule = \"rate(1 day)\"\n");
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let child = host
        .agent(&agent)
        .arg("run")
        .env("MOLT_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(full())
        .stderr(full())
        .spawn()
        .unwrap();
    let pid = child.id();
    host.children.push(child);
    host.wait_ready(pid);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(pid_alive(pid), "the agent died with its log unwritable");

    // the updater: a refused run still exits 2 with its output lost, not 101
    let out = std::process::Command::new(workspace_bin("updater"))
        .arg("--root")
        .arg(host.root())
        .env("MOLT_CONFIG", host.config())
        .arg("--target-version")
        .stdout(full())
        .stderr(full())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(2), "{out:?}");
    let out = std::process::Command::new(workspace_bin("updater"))
        .arg("--root")
        .arg(host.root())
        .env("MOLT_CONFIG", host.config())
        .args(["recover", "--service", "direct"])
        .env("MOLT_LOG", "debug")
        .stdout(full())
        .stderr(full())
        .status()
        .unwrap();
    assert!(out.code().is_some_and(|c| c != 101), "{out:?}");
}

fn write_schedule_json(host: &AgentHost, sched: &serde_json::Value) {
    std::fs::create_dir_all(host.root().join("agent")).unwrap();
    std::fs::write(host.root().join("agent/schedule.json"), sched.to_string()).unwrap();
}

/// A host first started, and last run, 30 days ago: on `rate(14 days)` its start is a
/// catch-up (missed) run.
fn last_ran_30_days_ago(host: &AgentHost) {
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 30);
    write_schedule_json(
        host,
        &serde_json::json!({
            "version": 1, "first_seen": long_ago.to_string(), "last_run": long_ago.to_string()
        }),
    );
}

fn schedule_json(host: &AgentHost) -> serde_json::Value {
    let bytes = std::fs::read(host.root().join("agent/schedule.json")).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

fn ts_of(v: &serde_json::Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

/// A scheduled run that fails on an expired timestamp (the likeliest fleet-wide failure:
/// the release tool's refresh stopped running) is retried before the next slot. The real
/// agent launches the real updater, which exits 4 and records its result; the agent keeps
/// the attempt and its class, `agent status` shows the retry, an agent restarted meanwhile
/// keeps it, and once a refresh has cured the repository the retry succeeds and the
/// schedule returns to its slots.
#[test]
fn a_scheduled_run_that_fails_verification_is_retried_before_the_next_slot() {
    let agent = workspace_bin("agent");
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", molt_schema::manifest::Status::Active);
    let mut host = AgentHost::new();
    host.write_config(&format!(
        "region = \"us-east-1\"\nsource = \"{}\"\ntrusted_root = \"{}\"\n\
         [updater]\nservice = \"direct\"\nsoak = \"200ms\"\nhealth_timeout = \"20s\"\n\
         [agent]\nschedule = \"rate(14 days)\"\njitter = \"0s\"\n",
        repo.url(),
        repo.trusted_root().display()
    ));
    let out = host
        .agent(&workspace_bin("updater"))
        .args(["--target-version", "1.0.0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "first install: {}", stderr(&out));
    let layout = host.layout();
    assert!(layout.updater_bin().exists());

    // The timestamp expires; two slots passed while the host was off: one catch-up run.
    let now = jiff::Timestamp::now();
    repo.refresh_at(
        now - jiff::SignedDuration::from_hours(48),
        Duration::from_secs(3600),
    );
    last_ran_30_days_ago(&host);
    let pid = host.start(&agent, &[]);
    host.wait_ready(pid);
    let sched = wait_for(Duration::from_secs(60), || {
        let s = schedule_json(&host);
        s["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the failed run was not recorded; agent log:\n{}\nupdater log:\n{}",
            host.log(),
            std::fs::read_to_string(host.root().join("agent/updater.log")).unwrap_or_default()
        )
    });
    let attempt = &sched["attempts"][0];
    assert_eq!(attempt["failure"], "verification", "{sched}");
    assert_eq!(attempt["exit_code"], 4, "{sched}");
    assert_eq!(attempt["reason"], "missed", "{sched}");
    assert!(
        attempt["message"].as_str().unwrap().contains("expired"),
        "{sched}"
    );
    assert!(sched["pending"].is_null(), "{sched}");
    // about 30 minutes later: at least half of it, at most all of it
    let retry_at = ts_of(&sched["retry_at"]);
    let failed_at = ts_of(&attempt["at"]);
    assert!(
        retry_at >= failed_at + jiff::SignedDuration::from_mins(15)
            && retry_at <= jiff::Timestamp::now() + jiff::SignedDuration::from_mins(30),
        "{sched}"
    );
    // the updater's own record of the run, under the agent's launch id
    let run: molt_host::attempt::RunResult = state::read_json(&layout.last_run()).unwrap().unwrap();
    assert_eq!(run.launch, last_launch(&host)["id"].as_str().unwrap());
    assert_eq!(run.exit_code, 4);
    assert_eq!(
        run.failure,
        Some(molt_host::attempt::FailureClass::Verification)
    );
    // nothing reached the journal: history holds the first install only
    assert_eq!(state::read_history(&layout.history()).unwrap().len(), 1);

    let status = host.status_json(&agent);
    let sc = &status["schedule"];
    assert_eq!(sc["next_reason"], "retry", "{sc}");
    assert_eq!(ts_of(&sc["next_run"]), retry_at, "{sc}");
    assert_eq!(sc["failed_attempts"][0]["failure"], "verification", "{sc}");
    assert_eq!(sc["retries"], 3, "{sc}");
    let text = host.agent(&agent).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("(retry 1 of 3)"), "{text}");
    assert!(
        text.contains("failed run:  verification failure at"),
        "{text}"
    );
    assert!(text.contains("(exit 4)"), "{text}");

    // The release tool's refresh cures the repository; the agent is restarted, and the
    // retry's time (moved into the past here, as if half an hour had gone) has come.
    repo.refresh_at(jiff::Timestamp::now(), Duration::from_secs(86_400));
    sigterm(pid);
    let child = host.children.iter_mut().find(|c| c.id() == pid).unwrap();
    wait_for(Duration::from_secs(5), || child.try_wait().unwrap()).expect("agent exits");
    let mut sched = schedule_json(&host);
    assert_eq!(
        ts_of(&sched["retry_at"]),
        retry_at,
        "a restart keeps the retry"
    );
    sched["retry_at"] = serde_json::json!(
        (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1)).to_string()
    );
    write_schedule_json(&host, &sched);
    let first_launch = last_launch(&host)["id"].clone();
    let pid = host.start(&agent, &[]);
    host.wait_ready(pid);
    let sched = wait_for(Duration::from_secs(60), || {
        let s = schedule_json(&host);
        (s["last_reason"] == "retry" && s["pending"].is_null()).then_some(s)
    })
    .unwrap_or_else(|| panic!("the retry did not run; agent log:\n{}", host.log()));
    let launch = last_launch(&host);
    assert_ne!(launch["id"], first_launch);
    assert_eq!(launch["reason"], "retry");
    assert!(
        sched["attempts"].is_null(),
        "a success ends the series: {sched}"
    );
    assert!(sched["retry_at"].is_null(), "{sched}");
    let run: molt_host::attempt::RunResult = state::read_json(&layout.last_run()).unwrap().unwrap();
    assert_eq!(run.launch, launch["id"].as_str().unwrap());
    assert_eq!((run.exit_code, run.failure), (0, None));
    let status = host.status_json(&agent);
    // back to the slots anchored at first start (30 days ago): the next is in 12 days
    assert_eq!(status["schedule"]["next_reason"], "scheduled");
    let next = ts_of(&status["schedule"]["next_run"]);
    let in_days = |d: i64| jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * d);
    assert!(next > in_days(11) && next < in_days(13), "{next}");
}

/// A run that cannot even start (no updater on the host runs) is a failed attempt too: it
/// is recorded as a launch failure and retried, never silently dropped until the next slot.
#[test]
fn a_run_whose_updater_cannot_start_is_retried() {
    let agent = workspace_bin("agent");
    let mut host = AgentHost::new();
    host.write_config(
        "region = \"us-east-1\"\n[updater]\nservice = \"direct\"\n[agent]\nschedule = \"rate(14 days)\"\njitter = \"0s\"\n",
    );
    // an empty bin/updater, and no other updater to fall back to
    std::fs::create_dir_all(host.root().join("bin")).unwrap();
    std::fs::write(host.root().join("bin/updater"), b"").unwrap();
    last_ran_30_days_ago(&host);
    let pid = host.start(&agent, &[]);
    host.wait_ready(pid);
    let sched = wait_for(Duration::from_secs(10), || {
        let s = schedule_json(&host);
        s["retry_at"].is_string().then_some(s)
    })
    .unwrap_or_else(|| panic!("no retry; log:\n{}", host.log()));
    assert_eq!(sched["attempts"][0]["failure"], "launch", "{sched}");
    assert!(sched["attempts"][0]["exit_code"].is_null(), "{sched}");
    assert!(
        sched["attempts"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no updater to launch"),
        "{sched}"
    );
    assert!(last_launch(&host)["error"].is_string());
    assert!(host.log().contains("retry 1 of 3 at"), "{}", host.log());
}
