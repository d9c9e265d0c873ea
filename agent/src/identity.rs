//! Who this host is: its rollout seed (SPEC §4) and the id its reports carry.
//!
//! Both are derived once and persisted under `state/`, so hosts cloned from one image
//! keep distinct places once they have run, and restarts never move a host between waves.
//! The instance id (IMDS) is asked for only when nothing is persisted yet.

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
    if let Ok(text) = std::fs::read_to_string(&path)
        && valid_host_id(text.trim())
    {
        return Ok(text.trim().to_owned());
    }
    let id = match instance_id(imds).await {
        Some(id) if valid_host_id(&id) => id,
        _ => match std::fs::read_to_string(MACHINE_ID)
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            Some(mid) => {
                let digest = Sha256::new()
                    .chain_update(HOST_ID_SALT)
                    .chain_update(mid.trim().as_bytes())
                    .finalize();
                format!("m-{}", hex::encode(&digest[..8]))
            }
            None => format!("r-{}", &molt_host::random_token()[..16]),
        },
    };
    state::write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}
