//! End to end: a fleet of 20 real agents, each with its own install root and rollout
//! seed, in two regions whose repositories live in buckets on the local S3 server. The
//! real `release-manifest` publishes releases wave by wave; the agents' schedules launch
//! the real updater, which reads its region's bucket anonymously; the agents report every
//! update to the results sink, which the publisher's guards read. eu-west-1's hosts reach
//! their bucket through a fault-injecting proxy that fails, resets, truncates and stalls
//! their requests while they update.
//!
//! The story, with an assertion on which hosts moved when at each step:
//! 1. 1.0.0 everywhere; every host installs it.
//! 2. 2.0.0 to wave 1 (us-east-1) only: its hosts move in two in-region waves (half at
//!    once, spread over 6 s; the rest at 6 s); eu-west-1's hosts stay on 1.0.0.
//!    `rollout advance` is refused while wave 1 bakes, then sends wave 2 (eu-west-1).
//! 3. A broken 3.0.0 (its agent dies at start) to wave 1: every us-east-1 host tries it
//!    once, rolls back to 2.0.0 and quarantines it. The hosts' reports make the guard
//!    refuse wave 2; pushed to eu-west-1 anyway, it is rolled back there too. The whole
//!    fleet stays healthy on 2.0.0.
//! 4. `rollout recall 2.0.0`: every host moves down to 1.0.0.
//!
//! At the end every host's history is exactly those four updates, every host reported
//! each of them, and each host's standalone updater followed the releases: it took the
//! (sound) 3.0.0 updater, and the recall's `MaxVersion` brought it down to 1.0.0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use molt_host::state::{self, HealthStatus, HistoryRecord, Outcome};
use molt_schema::Platform;
use molt_schema::rollout::{Delay, Rollout, Seed, Wave};
use molt_tests::agent_host::AgentHost;
use molt_tests::fixture::{pid_alive, stamped_build, wait_for, workspace_bin};
use molt_tests::http_server::{Fault, FileServer, Times};
use molt_tests::s3::S3Server;

const CANARY: &str = "us-east-1";
const REST: &str = "eu-west-1";
const HOSTS_PER_REGION: u16 = 10;
/// Wave 1's bake: long enough to see `rollout advance` refused, short enough for a test.
const BAKE: &str = "12s";
/// How long each step may take on a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(240);

/// The in-region waves of wave 1 (the plan's `rollout`): half the hosts spread over the
/// first 6 s, the rest at 6 s.
fn canary_waves() -> Vec<Wave> {
    vec![
        Wave {
            percent: 50,
            after: Delay(Duration::ZERO),
        },
        Wave {
            percent: 100,
            after: Delay(Duration::from_secs(6)),
        },
    ]
}

/// The release side: keys, the plan, the regions' buckets and the results sink.
struct Release {
    s3: S3Server,
    dir: tempfile::TempDir,
}

impl Release {
    fn new() -> Release {
        let release = Release {
            s3: S3Server::start(),
            dir: tempfile::tempdir().unwrap(),
        };
        for r in [CANARY, REST] {
            release.s3.create_bucket(&format!("acme-molt-{r}"));
        }
        release.s3.create_bucket("acme-molt-reports");
        std::fs::write(
            release.plan(),
            format!(
                "bucket = \"acme-molt-{{region}}\"\nendpoint_url = \"{}\"\n\
                 reports = \"s3://acme-molt-reports/fleet/\"\n\
                 failure_threshold = 0.2\nmin_reports = 5\nconcurrency = 2\n\
                 [[wave]]\nname = \"canary\"\nregions = [\"{CANARY}\"]\nbake = \"{BAKE}\"\n\
                 rollout = [{{ percent = 50, after = \"0s\" }}, {{ percent = 100, after = \"6s\" }}]\n\
                 [[wave]]\nname = \"rest\"\nregions = [\"{REST}\"]\nbake = \"0s\"\n",
                release.s3.endpoint()
            ),
        )
        .unwrap();
        release.must(&["keys", "generate", "--out", &release.keys()]);
        for r in [CANARY, REST] {
            let init = release.path(&format!("init-{r}"));
            release.must(&[
                "repo",
                "init",
                "--region",
                r,
                "--keys",
                &release.keys(),
                "--out",
                &init,
            ]);
            release.must(&[
                "repo",
                "upload",
                "--region",
                r,
                "--repo",
                &init,
                "--plan",
                &release.plan(),
                "--keys",
                &release.keys(),
            ]);
        }
        release
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn keys(&self) -> String {
        self.path("keys")
    }

    fn plan(&self) -> String {
        self.path("rollout.toml")
    }

    fn trusted_root(&self) -> PathBuf {
        self.dir.path().join("keys").join("root.json")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("release-manifest"))
            .args(args)
            .envs(self.s3.env_for_credentials())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("MOLT_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn must(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}\n{}", text(&out));
        out
    }

    /// `release-manifest package` of `version` from an agent and an updater program.
    fn package(&self, version: &str, agent: &Path, updater: &Path) {
        let platform = Platform::detect()
            .unwrap_or(Platform::LinuxAmd64)
            .to_string();
        self.must(&[
            "package",
            "--version",
            version,
            "--platform",
            &platform,
            "--agent",
            &agent.display().to_string(),
            "--updater",
            &updater.display().to_string(),
            "--out",
            &self.path(&format!("dist-{version}")),
        ]);
    }

    /// `<command…> --version V --dist D --plan P --keys K <scope…>`: `publish` or
    /// `rollout advance`.
    fn release_cmd(&self, command: &[&str], version: &str, scope: &[&str]) -> Output {
        let dist = self.path(&format!("dist-{version}"));
        let (plan, keys) = (self.plan(), self.keys());
        let mut args = command.to_vec();
        args.extend(["--version", version, "--dist", &dist, "--plan", &plan]);
        args.extend(["--keys", &keys]);
        args.extend(scope);
        self.run(&args)
    }

    fn publish(&self, version: &str, scope: &[&str]) -> Output {
        self.release_cmd(&["publish"], version, scope)
    }

    fn advance(&self, version: &str) -> Output {
        self.release_cmd(&["rollout", "advance"], version, &[])
    }

    /// The results sink's reports for `version` from `region`: host id → result.
    fn reports(&self, region: &str, version: &str) -> BTreeMap<String, String> {
        let dir = self.s3.object_path(
            "acme-molt-reports",
            &format!("fleet/{region}/{version}/placeholder"),
        );
        let dir = dir.parent().unwrap();
        let mut out = BTreeMap::new();
        for host in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for report in std::fs::read_dir(host.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let Ok(bytes) = std::fs::read(report.path()) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    continue;
                };
                out.insert(
                    host.file_name().to_string_lossy().into_owned(),
                    v["record"]["result"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        out
    }
}

/// One host of the fleet: its region and seed, and the real agent it runs.
struct FleetHost {
    host: AgentHost,
    region: &'static str,
    seed: Seed,
}

impl FleetHost {
    /// A host of `region` that reads its repository from `endpoint` (the S3 server, or the
    /// fault proxy in front of it).
    fn new(release: &Release, endpoint: &str, region: &'static str, seed: Seed) -> FleetHost {
        let host = AgentHost::new();
        host.write_config(&format!(
            "region = \"{region}\"\nsource = \"{}/acme-molt-{region}/\"\ntrusted_root = \"{}\"\n\
             [updater]\nservice = \"direct\"\nsoak = \"500ms\"\nhealth_timeout = \"60s\"\n\
             [agent]\nschedule = \"rate(2 seconds)\"\njitter = \"1s\"\n\
             report = \"s3://acme-molt-reports/fleet/\"\npoll = \"1s\"\n",
            endpoint.trim_end_matches('/'),
            release.trusted_root().display()
        ));
        // What a host derives once from its instance id and keeps: its rollout seed and the
        // id its reports carry. (The hosts share this machine's machine id.)
        std::fs::create_dir_all(host.layout().state_dir()).unwrap();
        std::fs::create_dir_all(host.layout().agent_dir()).unwrap();
        std::fs::write(host.layout().seed(), format!("{seed}\n")).unwrap();
        std::fs::write(
            host.layout().agent_dir().join("host-id"),
            format!(
                "i-{:017x}\n",
                (0xf1ee7 << 20) + (u64::from(region == REST) << 16) + u64::from(seed.get())
            ),
        )
        .unwrap();
        FleetHost { host, region, seed }
    }

    fn name(&self) -> String {
        format!("{} seed {}", self.region, self.seed)
    }

    fn history(&self) -> Vec<HistoryRecord> {
        state::read_history(&self.host.layout().history()).unwrap_or_default()
    }

    fn record_to(&self, version: &str) -> Option<HistoryRecord> {
        self.history()
            .into_iter()
            .find(|r| r.to.to_string() == version)
    }

    fn current(&self) -> Option<String> {
        self.host.layout().current_version().map(|v| v.to_string())
    }

    fn host_id(&self) -> String {
        std::fs::read_to_string(self.host.layout().agent_dir().join("host-id"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The agent runs, says it is ready, and is the version `current` points at.
    fn healthy_on(&self) -> Option<String> {
        let current = self.current()?;
        let health = self.host.health()?;
        (health.status == HealthStatus::Ready
            && pid_alive(health.pid)
            && health.version.to_string() == current)
            .then_some(current)
    }

    /// What `<root>/bin/updater --version` prints.
    fn standalone_updater(&self) -> String {
        let out = Command::new(self.host.layout().updater_bin())
            .arg("--version")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn updater_log(&self) -> String {
        std::fs::read_to_string(self.host.layout().agent_dir().join("updater.log"))
            .unwrap_or_default()
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.host.layout().agent_log()).unwrap_or_default()
    }

    fn diagnosis(&self) -> String {
        format!(
            "{}: current {:?}, health {:?}\nhistory: {:?}\nupdater log (tail):\n{}\nagent log (tail):\n{}\nagent log (reports and warnings):\n{}",
            self.name(),
            self.current(),
            self.host.health(),
            self.history()
                .iter()
                .map(|r| format!("{:?}→{} {:?}", r.from, r.to, r.result))
                .collect::<Vec<_>>(),
            tail(&self.updater_log(), 30),
            tail(&self.agent_log(), 20),
            self.agent_log()
                .lines()
                .filter(|l| l.contains("report") || l.contains("WARN") || l.contains("ERROR"))
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The time a release command starts, floored to the second: no `Start` the publisher
/// writes into a manifest, nor any update it causes, can be earlier.
fn now_floor() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap()
}

/// Waits until every host in `hosts` satisfies `done`, or fails naming those that don't.
fn wait_all(what: &str, hosts: &[&FleetHost], done: impl Fn(&FleetHost) -> bool) {
    let start = Instant::now();
    if wait_for(STEP, || hosts.iter().all(|h| done(h)).then_some(())).is_none() {
        let late: Vec<String> = hosts
            .iter()
            .filter(|h| !done(h))
            .map(|h| h.diagnosis())
            .collect();
        panic!(
            "{what}: {} of {} hosts not there after {:?}:\n{}",
            late.len(),
            hosts.len(),
            start.elapsed(),
            late.join("\n\n")
        );
    }
    eprintln!("{what}: all {} hosts in {:?}", hosts.len(), start.elapsed());
}

/// Waits until every host of `hosts` has tried `version` and runs `running` healthily,
/// then checks that each try ended in `outcome` and started no earlier than `not_before`.
fn wait_update(
    hosts: &[&FleetHost],
    version: &str,
    running: &str,
    outcome: Outcome,
    not_before: Timestamp,
) {
    let what = format!("{version} tried, {running} running, in {}", hosts[0].region);
    wait_all(&what, hosts, |h| {
        h.record_to(version).is_some() && h.healthy_on().as_deref() == Some(running)
    });
    for h in hosts {
        let r = h.record_to(version).unwrap();
        assert_eq!(r.result, outcome, "{}", h.diagnosis());
        assert!(
            r.started_at >= not_before,
            "{} tried {version} at {}, before it was sent at {not_before}",
            h.name(),
            r.started_at
        );
    }
}

/// Waits until the sink holds a report of `version` from each of `hosts`; returns them.
fn wait_reports(
    release: &Release,
    hosts: &[&FleetHost],
    version: &str,
) -> BTreeMap<String, String> {
    let region = hosts[0].region;
    let ids: Vec<String> = hosts.iter().map(|h| h.host_id()).collect();
    wait_for(STEP, || {
        let r = release.reports(region, version);
        ids.iter().all(|id| r.contains_key(id)).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "{region} {version}: reports {:?}\n{}",
            release.reports(region, version),
            hosts[0].diagnosis()
        )
    })
}

/// Asserts that no host of `hosts` started its update to `version` before `rollout` (the
/// in-region waves, from a `Start` no later than the real one) made it eligible.
fn assert_waves_respected(hosts: &[&FleetHost], version: &str, rollout: &Rollout) {
    for h in hosts {
        let record = h.record_to(version).unwrap();
        let eligible = rollout.eligible_at(h.seed).unwrap();
        assert!(
            record.started_at >= eligible,
            "{} started {version} at {} before its wave made it eligible at {eligible}",
            h.name(),
            record.started_at
        );
    }
}

/// Errors, resets, truncations, a stall and an ignored `Range` on the next requests of
/// eu-west-1's hosts: few enough that the updater's retries (5 attempts per download) and
/// the next scheduled run absorb them, so every update still succeeds once.
fn inject_faults(proxy: &FileServer) {
    let targets = format!("/acme-molt-{REST}/targets/");
    let f = proxy.faults();
    f.everywhere(Fault::Status(503), Times::N(3));
    f.on_prefix(&targets, Fault::ResetAfter(256 << 10), Times::N(3));
    f.on_prefix(&targets, Fault::Truncate(128 << 10), Times::N(2));
    f.on_prefix(
        &targets,
        Fault::Stall {
            after_bytes: 64 << 10,
            duration: Duration::from_secs(2),
        },
        Times::Once,
    );
    // No IgnoreRange here: whether a reset leaves bytes to resume from depends on how much
    // the client read before the RST arrived (a RST drops what the socket still held), so a
    // fleet run may never send `Range`. updater_http's range_ignored_restarts_from_zero
    // covers a server that ignores it.
}

/// Every injected fault met a request.
fn assert_faults_hit(proxy: &FileServer) {
    assert_eq!(
        proxy.faults().pending(),
        0,
        "faults left unused: {:?}; target requests: {:?}",
        proxy.faults().pending_rules(),
        proxy
            .request_log()
            .iter()
            .filter(|r| r.path.contains("/targets/"))
            .map(|r| format!(
                "{} {} {:?}",
                r.status,
                r.path.rsplit('/').next().unwrap_or(""),
                r.range
            ))
            .collect::<Vec<_>>()
    );
    let errors = proxy
        .request_log()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert!(errors >= 3, "{errors} requests answered 503");
}

#[test]
fn fleet_of_twenty_agents_across_two_regions() {
    let v1 = stamped_build("1.0.0");
    let v2 = stamped_build("2.0.0");
    let v3 = stamped_build("3.0.0");
    let release = Release::new();
    release.package("1.0.0", &v1.join("agent"), &v1.join("updater"));
    release.package("2.0.0", &v2.join("agent"), &v2.join("updater"));
    // A broken 3.0.0: a real 3.0.0 updater, and an agent that passes the pre-flights
    // (`--version`, and `check-config` of the host's config) but dies at start.
    let broken = release.dir.path().join("broken-agent");
    std::fs::write(
        &broken,
        "#!/bin/sh\ncase \"$*\" in\n--version) echo 'agent 3.0.0'; exit 0 ;;\n\
         *check-config) exit 0 ;;\nesac\n\
         echo 'agent 3.0.0: broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    release.package("3.0.0", &broken, &v3.join("updater"));

    // 1. 1.0.0 in both regions, installed on every host
    release.must(&[
        "publish",
        "--version",
        "1.0.0",
        "--dist",
        &release.path("dist-1.0.0"),
        "--plan",
        &release.plan(),
        "--keys",
        &release.keys(),
        "--regions",
        &format!("{CANARY},{REST}"),
    ]);
    // eu-west-1's hosts read their bucket through the fault-injecting proxy.
    let upstream = release.s3.endpoint();
    let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
    let proxy = FileServer::proxy(upstream.parse().unwrap()).unwrap();
    let spread = |i: u16| Seed::new(u64::from(i * (2048 / HOSTS_PER_REGION) + 17)).unwrap();
    let fleet: Vec<FleetHost> = (0..HOSTS_PER_REGION)
        .flat_map(|i| [CANARY, REST].map(|r| (r, spread(i))))
        .map(|(r, seed)| {
            let endpoint = if r == REST {
                proxy.base_url()
            } else {
                release.s3.endpoint()
            };
            FleetHost::new(&release, &endpoint, r, seed)
        })
        .collect();
    let canary: Vec<&FleetHost> = fleet.iter().filter(|h| h.region == CANARY).collect();
    let rest: Vec<&FleetHost> = fleet.iter().filter(|h| h.region == REST).collect();
    let all: Vec<&FleetHost> = fleet.iter().collect();
    // The first install, as `scripts/install.sh` does it: the updater installs 1.0.0 and
    // starts its agent. Four at a time.
    for batch in fleet.chunks(4) {
        let children: Vec<_> = batch
            .iter()
            .map(|h| {
                let mut c = h.host.agent(&v1.join("updater"));
                c.args(["--quiet", "--target-version", "1.0.0"])
                    .envs(release.s3.env_for_credentials())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                (h, c.spawn().unwrap())
            })
            .collect();
        for (h, child) in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}: {}", h.name(), text(&out));
        }
    }
    wait_all("1.0.0 installed and healthy", &all, |h| {
        h.healthy_on().as_deref() == Some("1.0.0")
    });

    // 2. 2.0.0 to wave 1 only, then to wave 2 once wave 1 has baked
    let published = now_floor();
    let out = release.publish("2.0.0", &["--wave", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = release.advance("2.0.0");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("bakes until"), "{}", text(&out));
    // The bake runs from the wave's start as the publish recorded it, which the publish's
    // own checks put later than `published`: wait for the instant the refusal named.
    let refused = text(&out);
    let bakes_until: Timestamp = refused
        .split("bakes until ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no instant in: {refused}"));
    wait_update(&canary, "2.0.0", "2.0.0", Outcome::Success, published);
    let rollout = Rollout::new(published, canary_waves()).unwrap();
    assert_waves_respected(&canary, "2.0.0", &rollout);
    // eu-west-1's hosts kept checking their region all along, and stayed on 1.0.0
    for h in &rest {
        assert!(h.record_to("2.0.0").is_none(), "{}", h.diagnosis());
        assert_eq!(
            h.healthy_on().as_deref(),
            Some("1.0.0"),
            "{}",
            h.diagnosis()
        );
        let launch: serde_json::Value = serde_json::from_slice(
            &std::fs::read(h.host.layout().agent_dir().join("last-launch.json")).unwrap(),
        )
        .unwrap();
        let at: Timestamp = launch["at"].as_str().unwrap().parse().unwrap();
        assert!(at > published, "{}: last launch {at}", h.name());
    }
    // Wave 1's reports reach the sink; after its bake, `rollout advance` sends wave 2.
    wait_reports(&release, &canary, "2.0.0");
    let baked = bakes_until + jiff::SignedDuration::from_millis(500);
    while Timestamp::now() < baked {
        std::thread::sleep(Duration::from_millis(200));
    }
    // The network between eu-west-1's hosts and their bucket misbehaves while they update.
    inject_faults(&proxy);
    let advanced = now_floor();
    let out = release.advance("2.0.0");
    assert!(out.status.success(), "{}", text(&out));
    wait_update(&rest, "2.0.0", "2.0.0", Outcome::Success, advanced);
    assert_faults_hit(&proxy);

    // 3. The broken 3.0.0: rolled back in wave 1, stopped by the guard, rolled back in
    //    wave 2 when pushed there anyway
    let published = now_floor();
    let out = release.publish("3.0.0", &["--wave", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_update(&canary, "3.0.0", "2.0.0", Outcome::RolledBack, published);
    let rollout = Rollout::new(published, canary_waves()).unwrap();
    assert_waves_respected(&canary, "3.0.0", &rollout);
    let reports = wait_reports(&release, &canary, "3.0.0");
    assert!(reports.values().all(|r| r == "rolled_back"), "{reports:?}");
    let out = release.publish("3.0.0", &["--wave", "2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("10 of 10 hosts' updates failed"),
        "{}",
        text(&out)
    );
    for h in &rest {
        assert!(h.record_to("3.0.0").is_none(), "{}", h.diagnosis());
    }
    inject_faults(&proxy);
    let pushed = now_floor();
    let out = release.publish("3.0.0", &["--regions", REST]);
    assert!(out.status.success(), "{}", text(&out));
    wait_update(&rest, "3.0.0", "2.0.0", Outcome::RolledBack, pushed);
    assert_faults_hit(&proxy);

    // The 3.0.0 updater itself is sound: every host's standalone updater took it (it
    // updates itself before the agent), and kept it through the agent's rollback.
    for h in &all {
        assert_eq!(h.standalone_updater(), "updater 3.0.0", "{}", h.diagnosis());
    }

    // 4. Recall 2.0.0: every host moves down to 1.0.0
    let out = release.must(&[
        "rollout",
        "recall",
        "2.0.0",
        "--plan",
        &release.plan(),
        "--keys",
        &release.keys(),
    ]);
    assert!(text(&out).contains(REST), "{}", text(&out));
    wait_all("1.0.0 after the recall", &all, |h| {
        h.history().len() == 4 && h.healthy_on().as_deref() == Some("1.0.0")
    });

    // Every host's history, in order: the install, the wave, the rollback, the recall.
    let expected = [
        (None, "1.0.0", Outcome::Success),
        (Some("1.0.0"), "2.0.0", Outcome::Success),
        (Some("2.0.0"), "3.0.0", Outcome::RolledBack),
        (Some("2.0.0"), "1.0.0", Outcome::Success),
    ];
    for h in &all {
        let history: Vec<(Option<String>, String, Outcome)> = h
            .history()
            .into_iter()
            .map(|r| (r.from.map(|v| v.to_string()), r.to.to_string(), r.result))
            .collect();
        let want: Vec<(Option<String>, String, Outcome)> = expected
            .iter()
            .map(|(f, t, o)| (f.map(str::to_owned), (*t).to_owned(), *o))
            .collect();
        assert_eq!(history, want, "{}", h.diagnosis());
        let status = h
            .host
            .status_json(&h.host.layout().current_link().join("bin/agent"));
        assert_eq!(status["installed"], "1.0.0", "{status}");
        assert_eq!(status["running"]["alive"], true, "{status}");
        assert_eq!(status["last_update"]["from"], "2.0.0", "{status}");
        // MaxVersion is the ceiling of every package: the standalone updater (3.0.0) moved
        // down to 1.0.0 too, before it moved the agent
        assert_eq!(h.standalone_updater(), "updater 1.0.0", "{}", h.diagnosis());
    }
    // Every host reported every update under its region, version and host id.
    for hosts in [&canary, &rest] {
        for (version, result) in [
            ("2.0.0", "success"),
            ("3.0.0", "rolled_back"),
            ("1.0.0", "success"),
        ] {
            let reports = wait_reports(&release, hosts, version);
            for h in hosts.iter() {
                assert_eq!(reports[&h.host_id()], result, "{} {version}", h.name());
            }
        }
    }
}
