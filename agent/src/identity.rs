//! Who this host is: its rollout seed (SPEC §4) and the id its reports carry.
//!
//! Both are derived once and persisted (the seed in `state/`, the id in `agent/`), so
//! restarts never move a host between waves. A clone of a baked image derives its own:
//! the seed keeps its origin (`molt_host::seed`), and the host id says what it came from
//! (`i-…` the instance id, `m-…` a hash of the machine id), so an id of another instance
//! or machine is derived afresh.

use molt_fetch::aws::{self, ImdsSettings};
use molt_host::seed::SeedSource;
use molt_host::state;
use molt_schema::rollout::Seed;
use sha2::{Digest as _, Sha256};

use crate::settings::AgentSettings;

use molt_fetch::aws::MACHINE_ID;
const HOST_ID_SALT: &[u8] = b"molt-host-id-v1";

async fn instance_id(imds: &ImdsSettings) -> Option<String> {
    match aws::instance_id(imds).await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::debug!("no instance id from IMDS: {e}");
            None
        }
    }
}

/// The persisted seed, or a new one from the instance id, the machine id or randomness
/// (the same derivation as the updater's: `molt_fetch::aws::host_seed`).
pub async fn seed(
    settings: &AgentSettings,
    imds: &ImdsSettings,
) -> Result<(Seed, SeedSource), state::StateError> {
    aws::host_seed(&settings.layout.seed(), imds).await
}

/// The host id made from a machine id: `m-` and 16 hex digits of its salted hash.
fn machine_host_id(machine_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(HOST_ID_SALT)
        .chain_update(machine_id.trim().as_bytes())
        .finalize();
    format!("m-{}", hex::encode(&digest[..8]))
}

/// Whether a persisted host id is another host's: an instance's id that is not this
/// instance's, or a machine id's that is not this machine's. An id this host cannot check
/// now (IMDS silent, no machine id) or a random one is kept.
fn names_another_host(persisted: &str, instance: Option<&str>, machine: Option<&str>) -> bool {
    match (persisted.get(..2), instance, machine) {
        (Some("i-"), Some(now), _) => now != persisted,
        (Some("m-"), _, Some(now)) => now != persisted,
        _ => false,
    }
}

fn valid_host_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The id this host's reports carry: the instance id, else a hash of the machine id,
/// else random; persisted in `agent/host-id`.
pub async fn host_id(
    settings: &AgentSettings,
    imds: &ImdsSettings,
) -> Result<String, state::StateError> {
    let path = settings.host_id_file();
    let persisted = std::fs::read_to_string(&path)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| valid_host_id(t));
    let machine = std::fs::read_to_string(MACHINE_ID)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|mid| machine_host_id(&mid));
    // An instance's id is checked against IMDS; any other is kept without asking it.
    let instance = match &persisted {
        Some(p) if !p.starts_with("i-") => None,
        _ => instance_id(imds).await.filter(|id| valid_host_id(id)),
    };
    if let Some(p) = persisted {
        if !names_another_host(&p, instance.as_deref(), machine.as_deref()) {
            return Ok(p);
        }
        tracing::warn!(
            "{} names another host ({p}: a clone of a baked image); deriving this host's afresh",
            path.display()
        );
    }
    let id = instance
        .or(machine)
        .unwrap_or_else(|| format!("r-{}", &molt_host::random_token()[..16]));
    state::write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloned_host_id_is_derived_afresh_and_an_unchecked_one_kept() {
        let here = machine_host_id("aaaa");
        assert!(!names_another_host(&here, None, Some(&here)));
        assert!(names_another_host(
            &machine_host_id("image"),
            None,
            Some(&here)
        ));
        assert!(!names_another_host(&machine_host_id("image"), None, None));
        assert!(names_another_host(
            "i-0image",
            Some("i-0clone"),
            Some(&here)
        ));
        assert!(
            !names_another_host("i-0image", None, Some(&here)),
            "IMDS silent"
        );
        assert!(!names_another_host("i-0clone", Some("i-0clone"), None));
        assert!(!names_another_host(
            "r-0123456789abcdef",
            Some("i-0clone"),
            Some(&here)
        ));
    }
}
