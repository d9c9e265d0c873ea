//! The publisher's record of what it last signed for each region.
//!
//! A region's bucket can be written by more people and programs than hold the signing keys.
//! Without a memory of its own, a publisher would follow whatever `timestamp.json` the
//! bucket serves, and anyone who can write the bucket could put back an older, validly
//! signed set (the one from before a recall, a halt or a `MaxVersion`) for the next publish
//! to sign on top of, undoing the recall for good. So the publisher keeps, outside the
//! bucket, the signed metadata it last published for each region, and every command that
//! signs compares the bucket with it before it signs anything:
//!
//! - a bucket whose targets, snapshot or timestamp version is below the record's, or whose
//!   timestamp has the record's version with other bytes, is refused
//!   ([`crate::publish::PublishError::RolledBack`]); `record restore` puts the remembered
//!   files back;
//! - a bucket that is newer is fine: only a holder of the keys can sign a newer set (a
//!   publish whose record was not kept, for example), and the record follows it;
//! - with no record for a region, the publisher refuses
//!   ([`crate::publish::PublishError::NoRecord`]) until an operator names the bucket's
//!   state once, with `record adopt --timestamp-version N`.
//!
//! The record of a region is a repository in a directory, in the bucket's own layout
//! (`<record>/<region>/metadata/…`, `targets/<sha256>.manifest.json`): the root chain, the
//! timestamp, and the snapshot, targets and manifest it names, the exact bytes that were
//! uploaded, so that they can be uploaded again. It is written through [`FsStore`] (each
//! file flushed to disk, then renamed into place), `timestamp.json` last, so a crash leaves
//! the old record or the new one; files the new timestamp no longer names are removed
//! after. It is read back through TUF from the trusted root, like the bucket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::publish::{PublishError, Pulled, TIMESTAMP, pull};
use crate::store::fs::FsStore;
use crate::store::{Condition, ObjectStore};
use molt_schema::region::Region;

/// Where the record lives: one directory per region below `dir`.
#[derive(Clone, Debug)]
pub struct Record {
    dir: PathBuf,
}

impl Record {
    pub fn new(dir: impl Into<PathBuf>) -> Record {
        Record { dir: dir.into() }
    }

    /// The record's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of `region`'s record.
    pub fn region_dir(&self, region: &Region) -> PathBuf {
        self.dir.join(region.as_str())
    }

    fn failed(&self, region: &Region, detail: impl std::fmt::Display) -> PublishError {
        PublishError::Record {
            path: self.region_dir(region),
            detail: detail.to_string(),
        }
    }

    /// What the publisher last signed for `region`, verified from `trusted_root`; `None`
    /// when there is no record (or only the start of a first one that never finished).
    pub(crate) async fn read(
        &self,
        region: &Region,
        trusted_root: &[u8],
    ) -> Result<Option<Remembered>, PublishError> {
        let dir = self.region_dir(region);
        match std::fs::symlink_metadata(dir.join(TIMESTAMP)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.failed(region, molt_schema::cli::one_line(&e))),
        }
        let store = FsStore::new(&dir);
        let pulled = pull(&store, region)
            .await
            .map_err(|e| self.failed(region, molt_schema::cli::one_line(&e)))?;
        // A record is signed metadata like the bucket's: one changed by hand, or from
        // another repository, is no record of ours.
        crate::tuf::repo::verify_signed(&dir, trusted_root)
            .await
            .map_err(|e| {
                self.failed(
                    region,
                    format!(
                        "it does not verify against the trusted root: {}",
                        molt_schema::cli::one_line(&e)
                    ),
                )
            })?;
        Ok(Some(Remembered { pulled }))
    }

    /// Makes `objects` (a whole signed set: root chain, timestamp, snapshot, targets and
    /// manifest) the record of `region`.
    pub(crate) async fn remember(
        &self,
        region: &Region,
        objects: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), PublishError> {
        let store = FsStore::create(self.region_dir(region))
            .map_err(|e| self.failed(region, molt_schema::cli::one_line(&e)))?;
        let put = |key: &str, bytes: &[u8]| {
            let store = &store;
            let (key, bytes) = (key.to_owned(), bytes.to_vec());
            async move { store.put(&key, bytes, Condition::None).await }
        };
        for (key, bytes) in objects.iter().filter(|(k, _)| k.as_str() != TIMESTAMP) {
            put(key, bytes)
                .await
                .map_err(|e| self.failed(region, molt_schema::cli::one_line(&e)))?;
        }
        let Some(ts) = objects.get(TIMESTAMP) else {
            return Err(self.failed(region, "the signed set to remember has no timestamp"));
        };
        put(TIMESTAMP, ts)
            .await
            .map_err(|e| self.failed(region, molt_schema::cli::one_line(&e)))?;
        // What the new timestamp no longer names: older snapshots, targets and manifests.
        for prefix in ["metadata/", "targets/"] {
            let listed = store
                .list(prefix)
                .await
                .map_err(|e| self.failed(region, molt_schema::cli::one_line(&e)))?;
            for key in listed.iter().filter(|k| !objects.contains_key(*k)) {
                store
                    .delete(key)
                    .await
                    .map_err(|e| self.failed(region, molt_schema::cli::one_line(&e)))?;
            }
        }
        Ok(())
    }
}

/// A region's record, as read.
pub(crate) struct Remembered {
    pub(crate) pulled: Pulled,
}

impl Remembered {
    /// Why `bucket` must not be signed on top of, if it must not: it is older than what the
    /// publisher last signed, or it holds another timestamp of the same version.
    pub(crate) fn refuses(&self, bucket: &Pulled) -> Option<String> {
        let (b, r) = (bucket.versions, self.pulled.versions);
        let roles = ["targets", "snapshot", "timestamp"];
        let older: Vec<String> = roles
            .iter()
            .zip(b.iter().zip(r.iter()))
            .filter(|(_, (b, r))| b < r)
            .map(|(role, (b, r))| format!("{role} version {b}, the record {r}"))
            .collect();
        if !older.is_empty() {
            return Some(format!(
                "the bucket holds older signed metadata than this publisher last signed ({})",
                older.join("; ")
            ));
        }
        if b[2] == r[2] && bucket.objects.get(TIMESTAMP) != self.pulled.objects.get(TIMESTAMP) {
            return Some(format!(
                "the bucket's timestamp version {} is not the one this publisher signed (other bytes)",
                b[2]
            ));
        }
        self.root_chain_differs(bucket)
    }

    /// Whether the bucket lacks a root version the record holds, or holds it with other
    /// bytes: new hosts start from `1.root.json` and follow the chain, so a chain cut short
    /// would leave them on a root whose keys a rotation retired.
    fn root_chain_differs(&self, bucket: &Pulled) -> Option<String> {
        let (key, _) = self
            .pulled
            .objects
            .iter()
            .filter(|(k, _)| k.ends_with(".root.json"))
            .find(|(k, bytes)| bucket.objects.get(*k) != Some(*bytes))?;
        Some(format!(
            "the bucket's root chain is not the one this publisher signed ({key} is missing or holds other bytes)"
        ))
    }

    /// Whether the record holds something the bucket does not: a newer timestamp, or the
    /// same version with other bytes (what `record restore` puts back).
    pub(crate) fn ahead_of(&self, bucket: &Pulled) -> bool {
        let (b, r) = (bucket.versions[2], self.pulled.versions[2]);
        r > b
            || (r == b && bucket.objects.get(TIMESTAMP) != self.pulled.objects.get(TIMESTAMP))
            || (r == b && self.root_chain_differs(bucket).is_some())
    }
}
