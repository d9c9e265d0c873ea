//! Shared command-line plumbing for molt's three binaries: logging set-up and the one
//! place errors are rendered (`error: …`, `  caused by: …`, `hint: …`).

use std::fmt::Write as _;

/// Exit codes shared by the binaries (SPEC §6).
pub mod exit {
    /// Done, or nothing to do.
    pub const OK: i32 = 0;
    /// Failed; nothing changed.
    pub const FAILED: i32 = 1;
    /// Bad usage (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// Refused by a rule.
    pub const REFUSED: i32 = 3;
    /// Verification failed: hash, length, signature, expiry, rollback, wrong region.
    pub const VERIFICATION: i32 = 4;
    /// The new version failed its health check and was rolled back.
    pub const ROLLED_BACK: i32 = 5;
    /// Another update holds the lock.
    pub const LOCKED: i32 = 6;
    /// Rollback failed: critical.
    pub const ROLLBACK_FAILED: i32 = 7;
}

/// A failure on its way out of a binary: the error chain, the exit code, and a hint.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::new(exit::FAILED, error)
    }
}

/// Renders a failure for a terminal: the error, each cause on its own line, then the hint.
/// A cause whose text the line above already holds (some libraries print their source
/// inside their own message) is not repeated.
pub fn render(failure: &Failure) -> String {
    let mut out = String::new();
    let mut chain = failure.error.chain();
    let mut last = String::new();
    if let Some(top) = chain.next() {
        last = top.to_string();
        let _ = writeln!(out, "error: {last}");
    }
    for cause in chain {
        let shown = cause.to_string();
        if last.contains(&shown) {
            continue;
        }
        let _ = writeln!(out, "  caused by: {shown}");
        last = shown;
    }
    if let Some(hint) = &failure.hint {
        let _ = writeln!(out, "hint: {hint}");
    }
    out
}

/// An error and its causes on one line, each cause once (a cause whose text the message
/// already holds is not repeated), for a log record or a message that must stand alone.
/// The renderer above prints causes on lines of their own instead.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let shown = inner.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = inner.source();
    }
    text
}

/// How log records are written: `text` (the default) or `json`, one object a line, for
/// journald and CloudWatch (`log_format` in the config, or `MOLT_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A `log_format` that is neither `text` nor `json`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown log format {0:?}; use \"text\" or \"json\"")]
pub struct BadLogFormat(pub String);

impl std::str::FromStr for LogFormat {
    type Err = BadLogFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(BadLogFormat(other.to_owned())),
        }
    }
}

impl<'de> serde::Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether log text may carry ANSI colours: only to a terminal, and never with `NO_COLOR`
/// set. A log file (`state/agent.log`), a pipe or journald gets plain text.
pub fn colour_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Sets up `tracing` to stderr. `MOLT_LOG` (an env-filter) wins; otherwise `-v` raises and
/// `-q` lowers the default level (warn). Colours only to a terminal ([`colour_stderr`]).
pub fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // At the default level, aws-config's credential chain stays quiet: it logs each failed
    // provider as a WARN with the raw error structure (an IMDS that answers 403, say), and
    // the command's own error already names the credentials problem and the fix. `-v` shows
    // it again.
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,aws_config=error",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("MOLT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // A log line that cannot be written (stderr is `state/agent.log` on a full disk) is
        // dropped; reporting it would `eprintln!` to the same stderr, which panics.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour_stderr()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
    };
}

/// Writes `text` to stderr, dropping it when stderr cannot be written (a full disk under
/// `state/`): the exit code must still be the one the failure chose, never a panic's 101.
pub fn write_stderr(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// [`write_stderr`] for stdout.
pub fn write_stdout(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn renders_chain_and_hint() {
        let err = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing /tmp/x")
            .unwrap_err();
        let f = Failure::new(exit::FAILED, err).with_hint("free some space");
        assert_eq!(
            render(&f),
            "error: writing /tmp/x\n  caused by: disk full\nhint: free some space\n"
        );
    }

    #[test]
    fn render_skips_a_cause_the_line_above_already_shows() {
        #[derive(Debug, thiserror::Error)]
        #[error("Transport error fetching 'x': {0}")]
        struct Repeats(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot fetch x")]
        struct Top(#[source] Repeats);
        let f = Failure::new(
            exit::FAILED,
            anyhow::Error::new(Top(Repeats(std::io::Error::other("connection reset")))),
        );
        assert_eq!(
            render(&f),
            "error: cannot fetch x\n  caused by: Transport error fetching 'x': connection reset\n"
        );
    }

    #[test]
    fn one_line_shows_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("fetching timestamp.json: {0}")]
        struct Repeats(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("the region could not be read")]
        struct Top(#[source] Repeats);
        let e = Top(Repeats(std::io::Error::other("connection reset")));
        assert_eq!(
            one_line(&e),
            "the region could not be read: fetching timestamp.json: connection reset"
        );
    }
}
