//! The host's rollout seed (SPEC §4): a number in 0..2048, derived once and persisted in
//! `state/seed`, so hosts spread across waves and keep their place across restarts.
//!
//! Derived from the instance id when one is given (IMDS), else from `/etc/machine-id`,
//! each hashed with a salt; else random. Hosts cloned from one image share a machine id
//! only until it is regenerated; the persisted seed is what counts afterwards.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::state::{StateError, write_atomic};
use molt_schema::rollout::Seed;

const SALT: &[u8] = b"molt-rollout-seed-v1";

/// Where a seed came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSource {
    Persisted,
    InstanceId,
    MachineId,
    Random,
}

/// Hashes an identity into the seed space.
pub fn seed_from_identity(identity: &str) -> Seed {
    let digest = Sha256::new()
        .chain_update(SALT)
        .chain_update(identity.trim().as_bytes())
        .finalize();
    Seed::wrapping(u16::from_be_bytes([digest[0], digest[1]]))
}

fn random_seed() -> Seed {
    let mut buf = [0u8; 2];
    if super::random_bytes(&mut buf).is_err() {
        // the clock's nanoseconds are a poor but acceptable fallback for spreading hosts
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        buf = [(nanos >> 8) as u8, nanos as u8];
    }
    Seed::wrapping(u16::from_be_bytes(buf))
}

/// The seed persisted at `path`, if the file holds one (the one parser of `state/seed`).
pub fn persisted(path: &Path) -> Option<Seed> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .and_then(|n| Seed::new(n).ok())
}

/// Reads the persisted seed, or derives one (instance id, then the machine id file, then
/// random) and persists it.
pub fn load_or_create(
    path: &Path,
    instance_id: Option<&str>,
    machine_id_file: &Path,
) -> Result<(Seed, SeedSource), StateError> {
    if let Some(seed) = persisted(path) {
        return Ok((seed, SeedSource::Persisted));
    }
    let (seed, source) = if let Some(id) = instance_id.filter(|s| !s.trim().is_empty()) {
        (seed_from_identity(id), SeedSource::InstanceId)
    } else if let Some(id) = std::fs::read_to_string(machine_id_file)
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        (seed_from_identity(&id), SeedSource::MachineId)
    } else {
        (random_seed(), SeedSource::Random)
    };
    write_atomic(path, format!("{seed}\n").as_bytes())?;
    Ok((seed, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_persists_and_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed");
        let mid = dir.path().join("machine-id");
        std::fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
        let (a, src) = load_or_create(&path, None, &mid).unwrap();
        assert_eq!(src, SeedSource::MachineId);
        assert_eq!(a, seed_from_identity("0123456789abcdef0123456789abcdef"));
        std::fs::write(&mid, "another").unwrap();
        let (b, src) = load_or_create(&path, None, &mid).unwrap();
        assert_eq!((b, src), (a, SeedSource::Persisted));
        let (c, src) = load_or_create(&dir.path().join("seed2"), Some("i-0abc"), &mid).unwrap();
        assert_eq!(
            (c, src),
            (seed_from_identity("i-0abc"), SeedSource::InstanceId)
        );
        let (_, src) =
            load_or_create(&dir.path().join("seed3"), None, &dir.path().join("none")).unwrap();
        assert_eq!(src, SeedSource::Random);
    }

    #[test]
    fn identities_spread_over_the_seed_space() {
        let mut buckets = [0u32; 8];
        for i in 0..8000 {
            let s = seed_from_identity(&format!("i-{i:08x}"));
            buckets[usize::from(s.get() / 256)] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }
}
