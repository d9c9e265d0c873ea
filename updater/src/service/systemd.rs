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

    fn restarts(&mut self) -> Option<u64> {
        let out = self
            .systemctl(&["show", "-p", "NRestarts", "--value", &self.unit])
            .ok()?;
        out.trim().parse().ok()
    }

    fn restarted_by_hand(
        &mut self,
        pid: u32,
        restarts_before: u64,
        within: std::time::Duration,
    ) -> Option<u32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let args = [
                "show",
                "-p",
                "NRestarts",
                "-p",
                "Result",
                "-p",
                "MainPID",
                "-p",
                "ActiveState",
                &self.unit,
            ];
            let out = self.systemctl(&args).ok()?;
            let unit = UnitState::parse(&out)?;
            // systemd restarted it (a crash under Restart=), or the old process failed.
            if unit.restarts != restarts_before || unit.result != "success" {
                return None;
            }
            if unit.active_state == "active"
                && let Some(main) = unit.main_pid.filter(|m| *m != pid)
            {
                return Some(main);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// What `systemctl show -p NRestarts -p Result -p MainPID -p ActiveState` says.
#[derive(Debug, PartialEq, Eq)]
struct UnitState {
    restarts: u64,
    result: String,
    main_pid: Option<u32>,
    active_state: String,
}

impl UnitState {
    fn parse(output: &str) -> Option<UnitState> {
        let mut restarts = None;
        let mut result = None;
        let mut main_pid = None;
        let mut active_state = None;
        for line in output.lines() {
            match line.split_once('=') {
                Some(("NRestarts", v)) => restarts = v.trim().parse().ok(),
                Some(("Result", v)) => result = Some(v.trim().to_owned()),
                Some(("MainPID", v)) => main_pid = parse_main_pid(v),
                Some(("ActiveState", v)) => active_state = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        Some(UnitState {
            restarts: restarts?,
            result: result?,
            main_pid: main_pid?,
            active_state: active_state?,
        })
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
    fn unit_state_values() {
        let out = "NRestarts=2\nResult=success\nMainPID=812\nActiveState=active\n";
        assert_eq!(
            UnitState::parse(out),
            Some(UnitState {
                restarts: 2,
                result: "success".into(),
                main_pid: Some(812),
                active_state: "active".into(),
            })
        );
        let stopped = "Result=exit-code\nMainPID=0\nNRestarts=0\nActiveState=activating\n";
        assert_eq!(UnitState::parse(stopped).unwrap().main_pid, None);
        // A property missing or garbled: no answer, so nothing is followed.
        assert_eq!(
            UnitState::parse("NRestarts=1\nResult=success\nMainPID=9\n"),
            None
        );
        assert_eq!(
            UnitState::parse("NRestarts=x\nResult=success\nMainPID=9\nActiveState=active"),
            None
        );
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
