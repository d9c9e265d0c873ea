//! Reporting update results (SPEC §7): each history record goes, once, to the results
//! sink `report = "s3://bucket/prefix"` as one small object per host and attempt:
//!
//! `<prefix>/<region>/<to-version>/<host-id>/<record-id>.json`
//!
//! The rollout tooling lists `<prefix>/<region>/<version>/` to count failures. The agent
//! remembers what it sent in `agent/reported.json`; a failed upload is retried at the
//! next poll, so a sink that is down loses nothing.

use std::collections::VecDeque;
use std::time::Duration;

use molt_fetch::s3::S3Location;
use molt_fetch::transport::MoltTransport;
use molt_host::state::{self, HistoryRecord, STATE_VERSION};
use molt_schema::Region;
use molt_schema::rollout::Seed;
use serde::{Deserialize, Serialize};

use crate::settings::AgentSettings;

/// How many reported ids are remembered (history records are reported newest first
/// after a long outage, at most this many).
const REMEMBER: usize = 200;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reported {
    #[serde(default)]
    version: u32,
    #[serde(default)]
    ids: VecDeque<String>,
}

/// What one report object holds.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub schema: u32,
    pub host: &'a str,
    pub region: &'a Region,
    pub platform: Option<String>,
    pub seed: u16,
    pub agent_version: &'a str,
    pub record: &'a HistoryRecord,
}

/// The object key of one report.
pub fn report_key(sink: &S3Location, region: &Region, host: &str, r: &HistoryRecord) -> String {
    format!(
        "{}{}/{}/{}/{}.json",
        sink.prefix(),
        region,
        r.to,
        host,
        r.id
    )
}

/// Whether any history record waits to be reported. Cheap (two small files), so the
/// agent builds no HTTP client and no credentials chain while there is nothing to send.
pub fn pending(settings: &AgentSettings) -> bool {
    let Ok(records) = state::read_history(&settings.layout.history()) else {
        return false;
    };
    if records.is_empty() {
        return false;
    }
    let reported: Reported = state::read_json(&settings.report_state())
        .ok()
        .flatten()
        .unwrap_or_default();
    records
        .iter()
        .rev()
        .take(REMEMBER)
        .any(|r| !reported.ids.contains(&r.id))
}

/// Uploads the history records not reported yet, through `transport` (which signs for the
/// sink). Returns how many were sent.
pub async fn send_pending(
    settings: &AgentSettings,
    sink: &S3Location,
    transport: &MoltTransport,
    region: &Region,
    host: &str,
    seed: Seed,
) -> Result<usize, String> {
    let records = state::read_history(&settings.layout.history()).map_err(|e| e.to_string())?;
    let path = settings.report_state();
    let mut reported: Reported = state::read_json(&path).ok().flatten().unwrap_or_default();
    let pending: Vec<&HistoryRecord> = records
        .iter()
        .rev()
        .take(REMEMBER)
        .filter(|r| !reported.ids.contains(&r.id))
        .collect();
    let mut sent = 0;
    for record in pending.into_iter().rev() {
        let report = Report {
            schema: STATE_VERSION,
            host,
            region,
            platform: settings
                .config
                .platform
                .map(|p| p.to_string())
                .or_else(|| molt_schema::Platform::detect().ok().map(|p| p.to_string())),
            seed: seed.get(),
            agent_version: molt_host::build::version(),
            record,
        };
        let body = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        let key = report_key(sink, region, host, record);
        let url = sink
            .object_url(&key, region, &|k| std::env::var(k).ok())
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            Duration::from_secs(60),
            molt_fetch::s3::put_object(transport, url, body, "application/json"),
        )
        .await
        .map_err(|_| format!("uploading {key} timed out after 60 s"))?
        .map_err(|e| {
            format!(
                "cannot upload the report {key}: {}",
                molt_schema::cli::one_line(&e)
            )
        })?;
        tracing::info!(
            "reported update {} ({} → {}) to {sink}",
            record.id,
            fmt_from(record),
            record.to
        );
        reported.ids.push_back(record.id.clone());
        while reported.ids.len() > REMEMBER {
            reported.ids.pop_front();
        }
        reported.version = STATE_VERSION;
        state::write_json(&path, &reported).map_err(|e| e.to_string())?;
        sent += 1;
    }
    Ok(sent)
}

fn fmt_from(r: &HistoryRecord) -> String {
    r.from
        .as_ref()
        .map_or_else(|| "nothing".to_owned(), ToString::to_string)
}
