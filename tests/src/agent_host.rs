//! A host for the real `agent` binary: a temporary directory with an install root and
//! a config file, the agents the test started, and clean-up that leaves nothing running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use molt_host::HostLayout;
use molt_host::state::{self, Health, HealthStatus};

use crate::fixture::{kill, wait_for};

/// An install root and config for a real agent started by the test.
#[derive(Debug)]
pub struct AgentHost {
    pub dir: tempfile::TempDir,
    pub children: Vec<Child>,
}

impl Default for AgentHost {
    fn default() -> Self {
        AgentHost::new()
    }
}

impl AgentHost {
    pub fn new() -> AgentHost {
        AgentHost {
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn layout(&self) -> HostLayout {
        HostLayout::new(self.root())
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// Writes the config: `root = <this host's root>`, then `text`.
    pub fn write_config(&self, text: &str) {
        std::fs::write(
            self.config(),
            format!("root = \"{}\"\n{text}", self.root().display()),
        )
        .unwrap();
    }

    /// `program` (an agent or an updater) with this host's config and a clean AWS
    /// environment: no region, no credentials, no IMDS (tests reach only loopback).
    pub fn agent(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("MOLT_CONFIG", self.config())
            .env_remove("MOLT_ROOT")
            .env_remove("MOLT_HEALTH_NONCE")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-credentials"),
            )
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-config"))
            .env("MOLT_LOG", "info");
        c
    }

    /// Starts `agent run`, its output in `agent.log`.
    pub fn start(&mut self, program: &Path, env: &[(&str, &str)]) -> u32 {
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let mut c = self.agent(program);
        c.arg("run")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = c.spawn().unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// What the agent the test started wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn health(&self) -> Option<Health> {
        state::read_json(&self.layout().health()).ok().flatten()
    }

    pub fn wait_ready(&self, pid: u32) -> Health {
        wait_for(Duration::from_secs(10), || {
            self.health()
                .filter(|h| h.pid == pid && h.status == HealthStatus::Ready)
        })
        .unwrap_or_else(|| panic!("agent {pid} never became ready; log:\n{}", self.log()))
    }

    /// `agent status --json`, run by `program`.
    pub fn status_json(&self, program: &Path) -> serde_json::Value {
        let out = self
            .agent(program)
            .args(["status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // the agent the updater started last (direct mode) leaves a pid file
        if let Some(pid) = std::fs::read_to_string(self.layout().agent_pid())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            kill(pid);
        }
        // Agents the updater started (direct mode) are detached, and so are updaters the
        // agent launched; an updater in flight may start another agent. Kill every process
        // that runs a program from under this host's directory until none is left.
        for _ in 0..20 {
            let left = processes_under(self.dir.path());
            if left.is_empty() {
                break;
            }
            for pid in left {
                kill(pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Live processes whose program (the first word of their command line) is under `dir`.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && crate::fixture::pid_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let arg0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
                Path::new(std::ffi::OsStr::from_bytes(arg0)).starts_with(dir)
            })
        })
        .collect()
}
