//! The host's rollout seed (SPEC §4): a number in 0..2048, derived once and persisted in
//! `state/seed`, so hosts spread across waves and keep their place across restarts.
//!
//! Derived from the instance id when one is given (IMDS), else from `/etc/machine-id`,
//! each hashed with a salt; else random.
//!
//! A baked image carries its seed into every instance made from it. So the seed is
//! persisted with its origin (`state/seed.origin`: salted hashes of the machine id and the
//! instance id it was derived on), and a seed whose origin is another host's (a machine id
//! or an instance id known both then and now differs) is derived afresh: every clone lands
//! in its own wave. A host from before the origin was kept adopts its current identity.

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

const ORIGIN_SALT: &[u8] = b"molt-seed-origin-v1";

/// The identity a seed was derived on: salted SHA-256 hashes (hex) of the machine id and
/// of the instance id, each when known.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    #[serde(default = "crate::state::state_version")]
    pub version: u32,
    #[serde(default)]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
}

fn origin_hash(id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(ORIGIN_SALT)
        .chain_update(id.trim().as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Origin {
    /// This host's identity now.
    pub fn of(machine_id: Option<&str>, instance_id: Option<&str>) -> Origin {
        let known = |id: Option<&str>| id.filter(|s| !s.trim().is_empty()).map(origin_hash);
        Origin {
            version: crate::state::STATE_VERSION,
            machine_id: known(machine_id),
            instance_id: known(instance_id),
        }
    }

    /// Whether `now` is another host than this origin: an id known both then and now
    /// differs. (An id unknown either time, such as an instance id IMDS did not give this
    /// once, decides nothing.)
    pub fn is_another_host(&self, now: &Origin) -> bool {
        let differs =
            |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
        differs(&self.machine_id, &now.machine_id) || differs(&self.instance_id, &now.instance_id)
    }
}

/// `seed.origin` beside the seed file.
pub fn origin_path(seed_path: &Path) -> std::path::PathBuf {
    seed_path.with_file_name("seed.origin")
}

/// The persisted seed's origin, if one was recorded.
pub fn origin(seed_path: &Path) -> Option<Origin> {
    crate::state::read_json(&origin_path(seed_path))
        .ok()
        .flatten()
}

/// Reads the persisted seed, or derives one (instance id, then the machine id file, then
/// random) and persists it with its origin. A persisted seed of another host (a clone of
/// the image it was baked into) is derived afresh. A derived seed that cannot be persisted
/// (an unprivileged agent; the updater persists it) is still returned, unless it is random.
pub fn load_or_create(
    path: &Path,
    instance_id: Option<&str>,
    machine_id_file: &Path,
) -> Result<(Seed, SeedSource), StateError> {
    let machine_id = std::fs::read_to_string(machine_id_file)
        .ok()
        .filter(|s| !s.trim().is_empty());
    let instance_id = instance_id.filter(|s| !s.trim().is_empty());
    let now = Origin::of(machine_id.as_deref(), instance_id);
    if let Some(seed) = persisted(path) {
        match origin(path) {
            Some(then) if then.is_another_host(&now) => {
                tracing::warn!(
                    "{} was derived on another host (its machine id or instance id differs: a clone of a baked image); deriving this host's afresh",
                    path.display()
                );
            }
            Some(_) => return Ok((seed, SeedSource::Persisted)),
            None => {
                // Persisted before origins were kept: this host adopts it.
                let _ = crate::state::write_json(&origin_path(path), &now);
                return Ok((seed, SeedSource::Persisted));
            }
        }
    }
    let (seed, source) = if let Some(id) = instance_id {
        (seed_from_identity(id), SeedSource::InstanceId)
    } else if let Some(id) = &machine_id {
        (seed_from_identity(id), SeedSource::MachineId)
    } else {
        (random_seed(), SeedSource::Random)
    };
    let written = write_atomic(path, format!("{seed}\n").as_bytes())
        .and_then(|()| crate::state::write_json(&origin_path(path), &now));
    match written {
        Ok(()) => Ok((seed, source)),
        Err(e) if source != SeedSource::Random => {
            tracing::debug!("cannot persist the rollout seed: {e}");
            Ok((seed, source))
        }
        Err(e) => Err(e),
    }
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
    fn a_clone_derives_its_own_seed_and_an_unknown_id_decides_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed");
        let mid = dir.path().join("machine-id");
        std::fs::write(&mid, "aaaa\n").unwrap();
        let (baked, _) = load_or_create(&path, Some("i-0baked"), &mid).unwrap();
        assert_eq!(baked, seed_from_identity("i-0baked"));
        // The image's instance again, IMDS silent this once: the same host.
        assert_eq!(
            load_or_create(&path, None, &mid).unwrap(),
            (baked, SeedSource::Persisted)
        );
        // A clone: another instance id, same machine id (the baker did not clear it).
        let (clone, src) = load_or_create(&path, Some("i-0clone"), &mid).unwrap();
        assert_eq!(
            (clone, src),
            (seed_from_identity("i-0clone"), SeedSource::InstanceId)
        );
        assert_eq!(
            load_or_create(&path, Some("i-0clone"), &mid).unwrap().1,
            SeedSource::Persisted
        );
        // A clone off EC2: another machine id.
        std::fs::write(&mid, "bbbb\n").unwrap();
        let (other, src) = load_or_create(&path, None, &mid).unwrap();
        assert_eq!(
            (other, src),
            (seed_from_identity("bbbb"), SeedSource::MachineId)
        );
        // A seed persisted before origins were kept is adopted, then guarded.
        let old = dir.path().join("old-seed");
        std::fs::write(&old, "77\n").unwrap();
        assert_eq!(
            load_or_create(&old, None, &mid).unwrap().1,
            SeedSource::Persisted
        );
        assert!(origin(&old).is_some());
        std::fs::write(&mid, "cccc\n").unwrap();
        assert_eq!(
            load_or_create(&old, None, &mid).unwrap().1,
            SeedSource::MachineId
        );
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
