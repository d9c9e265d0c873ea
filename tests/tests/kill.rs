//! Kill-at-checkpoint (rustup's approach): SIGKILL the updater at each step of an update
//! and prove that `updater recover` (or the next update) leaves `current` on a valid
//! version with a healthy agent. Then the same invariant over randomised kill instants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use molt_schema::Version;
use molt_schema::manifest::Status;
use molt_tests::fixture::{CHECKPOINTS, TestHost, TestRepo, journal_field, kill, wait_for};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn setup() -> (TestRepo, TestHost) {
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    let host = TestHost::new(&repo);
    let out = host.update("1.0.0", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    host.assert_healthy();
    (repo, host)
}

fn in_rollback(point: &str) -> bool {
    point.starts_with("rolling_back") || point.starts_with("rolled_back")
}

#[test]
fn killed_at_each_checkpoint_recovers() {
    for point in CHECKPOINTS {
        let (_repo, mut host) = setup();
        if in_rollback(point) {
            // long enough for the crash (300 ms after ready) to fall inside the soak
            host.soak = "1s".into();
        }
        let mut cmd = host.update_cmd("latest", &[]);
        if in_rollback(point) {
            cmd.env("MOLT_TEST_AGENT_2_0_0", "crash-in-soak");
        }
        let out = cmd.env("MOLT_TEST_KILL_AT", point).output().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: the updater was not killed there: {:?}",
            out.status
        );
        let rec = host.recover();
        assert!(
            rec.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&rec.stderr)
        );
        let now = host.assert_healthy();
        // before the switch, v1 stays; after the switch, recovery rolls back; a commit stands
        let expected = if point == "committed" {
            v("2.0.0")
        } else {
            v("1.0.0")
        };
        assert_eq!(now, expected, "{point}");
        assert!(
            !host.layout().journal().exists(),
            "{point}: journal cleared"
        );
        if in_rollback(point) {
            let last = host.history().pop().unwrap();
            assert_eq!(
                last.result,
                molt_host::state::Outcome::RolledBack,
                "{point}: {last:?}"
            );
        }
        // and the next update completes normally (--force: a rollback quarantined 2.0.0)
        let out = host.update("latest", &["--force"]);
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(host.assert_healthy(), v("2.0.0"), "{point}");
    }
}

#[test]
fn killed_at_random_instants_recovers() {
    // A simple deterministic generator: the instants vary over the whole update.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (_repo, mut host) = setup();
    host.soak = "100ms".into();
    // How long an uninterrupted update takes here, and when its journal appears, so that the
    // kill instants cover all of it whatever the machine's load: most runs wait for the
    // journal and then kill at a random point of what remains; every fifth run kills at a
    // random instant from the start (the lock, the fetch, the download). The update's
    // duration is measured again on every run that finished before its kill.
    let journal = host.layout().journal();
    let wait_for_journal = |child: &mut std::process::Child| -> Option<Instant> {
        loop {
            if journal.exists() {
                return Some(Instant::now());
            }
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let t = Instant::now();
    let log = host.root.path().join("baseline.log");
    let mut child = host
        .update_cmd("2.0.0", &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let seen = wait_for_journal(&mut child);
    let status = child.wait().unwrap();
    assert!(
        status.success() && seen.is_some(),
        "the uninterrupted update ({status}; journal seen: {}): {}",
        seen.is_some(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut full = t.elapsed().as_millis() as u64;
    let mut after_journal = seen.map_or(full, |s| s.elapsed().as_millis() as u64);
    let mut steps_hit = std::collections::BTreeMap::<String, u32>::new();
    let runs = 50;
    for i in 0..runs {
        let target = if host.current() == Some(v("2.0.0")) {
            "1.0.0"
        } else {
            "2.0.0"
        };
        let spawned = Instant::now();
        let mut child = host
            .update_cmd(target, &["--allow-downgrade"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (from, delay) = if i % 5 == 0 {
            (spawned, next() % (full + full / 10 + 1))
        } else if i % 5 == 2 || i % 5 == 4 {
            // The download and unpack ("started") take most of an update on a slow or busy
            // machine: two runs in five wait for the switch to begin, then kill within the
            // few hundred milliseconds of the stop, the switch, the health check and the
            // soak, so the instants cover those steps whatever the machine's speed.
            let later = loop {
                match journal_field(&journal, "step") {
                    Some(step) if step != "started" => break Some(Instant::now()),
                    _ if child.try_wait().unwrap().is_some() => break None,
                    _ => std::thread::sleep(Duration::from_millis(1)),
                }
            };
            match later {
                Some(at) => (at, next() % 400),
                None => (spawned, 0),
            }
        } else {
            match wait_for_journal(&mut child) {
                Some(at) => (at, next() % (after_journal + 1)),
                None => (spawned, 0),
            }
        };
        let delay = Duration::from_millis(delay);
        let mut finished = false;
        while from.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if finished {
            // It ran to the end before its kill: this is how long an update takes now.
            full = spawned.elapsed().as_millis() as u64;
            if from != spawned {
                after_journal = from.elapsed().as_millis() as u64;
            }
        }
        kill(child.id());
        let _ = child.wait();
        let step = host
            .journal_field("step")
            .unwrap_or_else(|| "(no journal)".to_owned());
        *steps_hit.entry(step).or_default() += 1;
        let rec = host.recover();
        assert!(
            rec.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&rec.stderr)
        );
        let now = host.assert_healthy();
        assert!(now == v("1.0.0") || now == v("2.0.0"), "run {i}: {now}");
        assert!(!host.layout().journal().exists(), "run {i}");
    }
    eprintln!("journal step at the kill, over {runs} runs: {steps_hit:?}");
    // the instants must land inside the update, not only before or after it
    // (Which steps get hit depends on the machine's timing: "stopping" and "switching" are
    // a few milliseconds wide, so demand two steps and many kills inside, not three steps.)
    let inside: Vec<u32> = steps_hit
        .iter()
        .filter(|(k, _)| k.as_str() != "(no journal)")
        .map(|(_, n)| *n)
        .collect();
    assert!(
        inside.len() >= 2 && inside.iter().sum::<u32>() >= runs / 4,
        "kills landed in too few steps: {steps_hit:?}"
    );
}

/// Random kills while a rollback runs: the new version crashes in its soak, and the
/// updater is killed at a random instant after the journal says `rolling_back`.
#[test]
fn killed_at_random_instants_of_a_rollback_recovers() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (_repo, mut host) = setup();
    // long enough for the crash (300 ms after ready) to fall inside the soak
    host.soak = "1s".into();
    let journal = host.layout().journal();
    let rolling_back = || journal_field(&journal, "step");
    // How long a rollback takes here, from its journal step to the updater's exit.
    let measure = |host: &TestHost| {
        let child = host
            .update_cmd("2.0.0", &["--force"])
            .env("MOLT_TEST_AGENT_2_0_0", "crash-in-soak")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let seen = wait_for(Duration::from_secs(30), || {
            (rolling_back().as_deref() == Some("rolling_back")).then(Instant::now)
        });
        (child, seen)
    };
    let (mut child, seen) = measure(&host);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5), "the uninterrupted rollback");
    let window = seen.map_or(1000, |s| s.elapsed().as_millis() as u64);
    let runs = 12;
    let mut steps = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..runs {
        let (mut child, seen) = measure(&host);
        assert!(seen.is_some(), "run {i}: the rollback never started");
        std::thread::sleep(Duration::from_millis(next() % (window + 1)));
        kill(child.id());
        let _ = child.wait();
        *steps
            .entry(rolling_back().unwrap_or_else(|| "(no journal)".into()))
            .or_default() += 1;
        let rec = host.recover();
        assert!(
            rec.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&rec.stderr)
        );
        assert_eq!(host.assert_healthy(), v("1.0.0"), "run {i}");
        assert!(!host.layout().journal().exists(), "run {i}");
    }
    eprintln!("journal step at the kill, over {runs} runs: {steps:?}");
    assert!(
        steps.get("rolling_back").copied().unwrap_or(0) >= runs / 3,
        "too few kills inside the rollback: {steps:?}"
    );
}
