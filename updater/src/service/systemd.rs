//! systemd mode: `systemctl stop|start <unit>`. The nonce reaches the agent through the
//! service manager's environment (`set-environment` before the start, `unset-environment`
//! after), and the agent's pid is the unit's `MainPID`. The unit file sets `MOLT_ROOT`.

use std::ffi::OsString;
use std::process::Command;

use super::{NONCE_ENV, ServiceError, ServiceManager, alive_non_child};

/// Controls the agent's systemd unit.
#[derive(Debug, Clone)]
pub struct SystemdService {
    unit: String,
    systemctl: OsString,
}

impl SystemdService {
    /// Controls `unit` with the `systemctl` found on PATH.
    pub fn new(unit: &str) -> SystemdService {
        SystemdService {
            unit: unit.to_owned(),
            systemctl: OsString::from("systemctl"),
        }
    }

    /// Uses another `systemctl` program (tests pass a fake one; PATH is process-global).
    pub fn with_systemctl(mut self, program: impl Into<OsString>) -> Self {
        self.systemctl = program.into();
        self
    }

    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Runs `systemctl <args>`; its stdout on success.
    fn systemctl(&self, args: &[&str]) -> Result<String, ServiceError> {
        let command = format!("{} {}", self.systemctl.to_string_lossy(), args.join(" "));
        tracing::debug!(%command, "running");
        // A start or stop job waits for the unit (up to its TimeoutStopSec, 90 s by default,
        // before systemd's SIGKILL); a query answers at once. A systemctl stuck beyond that
        // (a wedged D-Bus) is killed: it must not hold the update lock for ever.
        let limit = match args.first() {
            Some(&("start" | "stop" | "restart")) => std::time::Duration::from_secs(300),
            _ => std::time::Duration::from_secs(30),
        };
        let mut cmd = Command::new(&self.systemctl);
        cmd.args(args);
        let out = molt_host::process::run_bounded(&mut cmd, limit).map_err(|e| match e {
            molt_host::process::BoundedError::Spawn { source, .. } => ServiceError::RunCommand {
                command: command.clone(),
                source,
            },
            hung @ molt_host::process::BoundedError::Hung { .. } => ServiceError::RunCommand {
                command: command.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, hung.to_string()),
            },
        })?;
        if !out.status.success() {
            return Err(ServiceError::CommandFailed {
                command,
                status: out.status,
                stderr: out.stderr.trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }
}

/// The value of `systemctl show -p MainPID --value`: 0 means no main process.
fn parse_main_pid(output: &str) -> Option<Option<u32>> {
    match output.trim().parse::<u32>().ok()? {
        0 => Some(None),
        pid => Some(Some(pid)),
    }
}

impl ServiceManager for SystemdService {
    fn stop(&mut self) -> Result<(), ServiceError> {
        // `systemctl stop` waits for the stop job, i.e. until the unit's processes are gone
        // (systemd sends SIGTERM, then SIGKILL after the unit's TimeoutStopSec).
        self.systemctl(&["stop", &self.unit]).map(drop)
    }

    fn start(&mut self, nonce: &str) -> Result<u32, ServiceError> {
        self.systemctl(&["set-environment", &format!("{NONCE_ENV}={nonce}")])?;
        let started = self.systemctl(&["start", &self.unit]);
        // Later restarts of the unit (Restart=) must not reuse this start's nonce.
        let unset = self.systemctl(&["unset-environment", NONCE_ENV]);
        started?;
        if let Err(e) = unset {
            tracing::warn!(error = %e, "cannot clear {NONCE_ENV} from the service manager");
        }
        match self.main_pid()? {
            Some(pid) => Ok(pid),
            None => Err(ServiceError::NoMainPid {
                command: format!("{} start {}", self.systemctl.to_string_lossy(), self.unit),
                unit: self.unit.clone(),
            }),
        }
    }

    fn main_pid(&mut self) -> Result<Option<u32>, ServiceError> {
        let args = ["show", "-p", "MainPID", "--value", &self.unit];
        let output = self.systemctl(&args)?;
        parse_main_pid(&output).ok_or_else(|| ServiceError::BadMainPid {
            command: format!("{} {}", self.systemctl.to_string_lossy(), args.join(" ")),
            output: output.trim().to_owned(),
        })
    }

    fn is_alive(&mut self, pid: u32) -> bool {
        // systemd reaps its services; a zombie here is one it has not reaped yet.
        alive_non_child(pid, None)
    }

    fn unit_name(&self) -> Option<&str> {
        Some(&self.unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_pid_values() {
        assert_eq!(parse_main_pid("0\n"), Some(None));
        assert_eq!(parse_main_pid("1234\n"), Some(Some(1234)));
        assert_eq!(parse_main_pid(""), None);
        assert_eq!(parse_main_pid("MainPID=12"), None);
    }

    #[test]
    fn a_missing_systemctl_is_named() {
        let mut svc =
            SystemdService::new("molt-agent.service").with_systemctl("/nonexistent/systemctl");
        match svc.stop() {
            Err(ServiceError::RunCommand { command, .. }) => {
                assert_eq!(command, "/nonexistent/systemctl stop molt-agent.service")
            }
            other => panic!("{other:?}"),
        }
    }
}
