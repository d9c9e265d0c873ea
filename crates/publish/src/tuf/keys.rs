//! Role keys: generation and loading.
//!
//! `keys generate --out DIR` writes:
//!
//! ```text
//! DIR/root/root-1.pem … root-N.pem     the root keys: keep them offline, apart from the rest
//! DIR/targets.pem                      online keys, used by CI to add, publish and refresh
//! DIR/snapshot.pem
//! DIR/timestamp.pem
//! DIR/keys.json                        public: key ids per role and the root threshold
//! ```
//!
//! Keys are Ed25519, PKCS#8 v1 in PEM (`PRIVATE KEY`; v2 keys of earlier versions still load), written with mode 0600 and never over
//! an existing file. Only `repo init` and `root rotate` read `DIR/root/`; every other
//! command works with a keys directory that holds no root key.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};
use tough::key_source::KeySource;
use tough::sign::{Sign, parse_keypair};

/// The online roles: their keys sign every release and refresh.
pub const ONLINE_ROLES: [&str; 3] = ["targets", "snapshot", "timestamp"];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot create the keys directory {path}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to overwrite the existing key file {path}")]
    Exists { path: PathBuf },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not a PEM \"PRIVATE KEY\" (PKCS#8)")]
    NotPem { path: PathBuf },
    #[error(
        "key file {path} holds a key molt cannot sign with ({reason}); molt signs with Ed25519 keys in PKCS#8 PEM"
    )]
    Unusable { path: PathBuf, reason: String },
    #[error("key generation failed")]
    Generate,
    #[error(
        "the root threshold {threshold} must be between 1 and the number of root keys ({count})"
    )]
    Threshold { threshold: u64, count: usize },
    #[error("{path} is not a keys directory: {reason}")]
    BadDir { path: PathBuf, reason: String },
    #[error(
        "the keys directory {dir} holds no root keys (expected {dir}/root/root-*.pem); root keys are needed only for `repo init` and `root rotate`"
    )]
    NoRootKeys { dir: PathBuf },
}

/// The public description of a keys directory, `keys.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysInfo {
    pub version: u32,
    pub root_threshold: u64,
    /// Key ids (hex) per role.
    pub roles: BTreeMap<String, Vec<String>>,
}

/// A key read from a PEM file, usable by tough's signer.
#[derive(Debug)]
pub struct PemKey {
    pub path: PathBuf,
}

#[async_trait]
impl KeySource for PemKey {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let der = read_pem(&self.path)?;
        Ok(Box::new(parse_keypair(&der)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err(format!("molt never writes keys back to {}", self.path.display()).into())
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, KeyError> {
    let text = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let pem = pem::parse(&text).map_err(|_| KeyError::NotPem {
        path: path.to_owned(),
    })?;
    if pem.tag() != "PRIVATE KEY" {
        return Err(KeyError::NotPem {
            path: path.to_owned(),
        });
    }
    Ok(pem.into_contents())
}

/// The public TUF key of a PEM key file.
pub fn public_key(path: &Path) -> Result<tough::schema::key::Key, KeyError> {
    let der = read_pem(path)?;
    let pair = parse_keypair(&der).map_err(|e| KeyError::Unusable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(pair.tuf_key())
}

/// The hex key id of a TUF key.
pub fn key_id(key: &tough::schema::key::Key) -> Result<String, KeyError> {
    key.key_id()
        .map(|id| hex::encode(&*id))
        .map_err(|e| KeyError::Unusable {
            path: PathBuf::new(),
            reason: e.to_string(),
        })
}

/// The key files of a keys directory.
#[derive(Clone, Debug)]
pub struct KeyDir {
    pub dir: PathBuf,
    pub info: KeysInfo,
}

impl KeyDir {
    pub fn open(dir: &Path) -> Result<KeyDir, KeyError> {
        let path = dir.join("keys.json");
        let bytes = std::fs::read(&path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })?;
        let info: KeysInfo = serde_json::from_slice(&bytes).map_err(|e| KeyError::BadDir {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(KeyDir {
            dir: dir.to_owned(),
            info,
        })
    }

    pub fn role_path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.pem"))
    }

    /// The online keys present in this directory, as tough key sources.
    pub fn online_keys(&self) -> Vec<Box<dyn KeySource>> {
        ONLINE_ROLES
            .iter()
            .map(|r| self.role_path(r))
            .filter(|p| p.exists())
            .map(|path| Box::new(PemKey { path }) as Box<dyn KeySource>)
            .collect()
    }

    /// The root key files, sorted; an error when there are none.
    pub fn root_key_paths(&self) -> Result<Vec<PathBuf>, KeyError> {
        let root_dir = self.dir.join("root");
        let mut out: Vec<PathBuf> = match std::fs::read_dir(&root_dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "pem"))
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        if out.is_empty() {
            return Err(KeyError::NoRootKeys {
                dir: self.dir.clone(),
            });
        }
        Ok(out)
    }

    pub fn root_keys(&self) -> Result<Vec<Box<dyn KeySource>>, KeyError> {
        Ok(self
            .root_key_paths()?
            .into_iter()
            .map(|path| Box::new(PemKey { path }) as Box<dyn KeySource>)
            .collect())
    }
}

/// Writes `bytes` to a new file with mode 0600; never overwrites.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| KeyError::Write {
            path: path.to_owned(),
            source,
        })
}

/// The DER of a PKCS#8 v2 Ed25519 key as aws-lc writes it, up to the 32-byte seed: the
/// version is 1 (v2), and the public key follows the seed.
const PKCS8_V2_HEAD: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The same key as PKCS#8 v1 (RFC 8410's `PrivateKeyInfo`: version 0, no public key), up
/// to the seed.
const PKCS8_V1_HEAD: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new Ed25519 key as a PEM `PRIVATE KEY` in PKCS#8 v1, the form every PKCS#8 reader
/// takes (OpenSSL, Python's `cryptography`, Go); some reject aws-lc's v2 ("extra data").
fn generate_pem() -> Result<String, KeyError> {
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
    let v2 = doc.as_ref();
    let seed = v2
        .strip_prefix(&PKCS8_V2_HEAD[..])
        .and_then(|rest| rest.get(..32))
        .ok_or(KeyError::Generate)?;
    let mut v1 = PKCS8_V1_HEAD.to_vec();
    v1.extend_from_slice(seed);
    // The key must still be the one generated.
    let pair = Ed25519KeyPair::from_pkcs8(&v1).map_err(|_| KeyError::Generate)?;
    let generated = Ed25519KeyPair::from_pkcs8(v2).map_err(|_| KeyError::Generate)?;
    {
        use aws_lc_rs::signature::KeyPair as _;
        if pair.public_key().as_ref() != generated.public_key().as_ref() {
            return Err(KeyError::Generate);
        }
    }
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", v1)))
}

/// Generates a keys directory: `root_count` root keys with `root_threshold`, and one key
/// for each online role.
pub fn generate(dir: &Path, root_count: usize, root_threshold: u64) -> Result<KeyDir, KeyError> {
    if root_threshold == 0 || root_threshold > root_count as u64 {
        return Err(KeyError::Threshold {
            threshold: root_threshold,
            count: root_count,
        });
    }
    let root_dir = dir.join("root");
    std::fs::create_dir_all(&root_dir).map_err(|source| KeyError::CreateDir {
        path: root_dir.clone(),
        source,
    })?;
    let mut roles: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 1..=root_count {
        let path = root_dir.join(format!("root-{i}.pem"));
        write_secret(&path, generate_pem()?.as_bytes())?;
        roles
            .entry("root".into())
            .or_default()
            .push(key_id(&public_key(&path)?)?);
    }
    for role in ONLINE_ROLES {
        let path = dir.join(format!("{role}.pem"));
        write_secret(&path, generate_pem()?.as_bytes())?;
        roles
            .entry(role.into())
            .or_default()
            .push(key_id(&public_key(&path)?)?);
    }
    let info = KeysInfo {
        version: 1,
        root_threshold,
        roles,
    };
    let path = dir.join("keys.json");
    let mut json = serde_json::to_vec_pretty(&info).map_err(|e| KeyError::BadDir {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    std::fs::write(&path, json).map_err(|source| KeyError::Write { path, source })?;
    Ok(KeyDir {
        dir: dir.to_owned(),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New keys are PKCS#8 v1 (48 bytes of DER, version 0, no public key), which OpenSSL
    /// and Python's `cryptography` read; keys written by earlier molt versions (aws-lc's
    /// v2) still sign.
    #[tokio::test]
    async fn keys_are_pkcs8_v1_and_older_v2_keys_still_sign() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 1, 1).unwrap();
        let path = dir.path().join("targets.pem");
        let der = read_pem(&path).unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(&der[..16], &PKCS8_V1_HEAD[..]);
        let rng = SystemRandom::new();
        let signs = |path: &Path| {
            let key = PemKey {
                path: path.to_owned(),
            };
            let rng = &rng;
            async move {
                key.as_sign()
                    .await
                    .unwrap()
                    .sign(b"molt", rng)
                    .await
                    .unwrap()
            }
        };
        signs(&path).await;

        let v2 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        assert_eq!(&v2.as_ref()[..16], &PKCS8_V2_HEAD[..]);
        let old = dir.path().join("old.pem");
        std::fs::write(
            &old,
            pem::encode(&pem::Pem::new("PRIVATE KEY", v2.as_ref().to_vec())),
        )
        .unwrap();
        signs(&old).await;
        public_key(&old).unwrap();
    }

    #[test]
    fn generates_separate_root_keys_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate(dir.path(), 3, 2).unwrap();
        assert_eq!(keys.info.root_threshold, 2);
        assert_eq!(keys.info.roles["root"].len(), 3);
        assert_eq!(keys.root_key_paths().unwrap().len(), 3);
        assert_eq!(keys.online_keys().len(), 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for p in keys
                .root_key_paths()
                .unwrap()
                .into_iter()
                .chain(ONLINE_ROLES.map(|r| keys.role_path(r)))
            {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
                assert!(
                    std::fs::read_to_string(&p)
                        .unwrap()
                        .starts_with("-----BEGIN PRIVATE KEY-----")
                );
            }
        }
        // never overwrites
        assert!(matches!(
            generate(dir.path(), 3, 2),
            Err(KeyError::Exists { .. })
        ));
        // the public ids match the files
        let reopened = KeyDir::open(dir.path()).unwrap();
        assert_eq!(reopened.info, keys.info);
        assert_eq!(
            key_id(&public_key(&keys.role_path("targets")).unwrap()).unwrap(),
            keys.info.roles["targets"][0]
        );
    }

    #[test]
    fn bad_thresholds_and_missing_root_keys() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            generate(dir.path(), 2, 3),
            Err(KeyError::Threshold { .. })
        ));
        assert!(matches!(
            generate(dir.path(), 2, 0),
            Err(KeyError::Threshold { .. })
        ));
        let keys = generate(&dir.path().join("k"), 1, 1).unwrap();
        std::fs::remove_dir_all(keys.dir.join("root")).unwrap();
        assert!(matches!(
            keys.root_key_paths(),
            Err(KeyError::NoRootKeys { .. })
        ));
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        assert!(matches!(public_key(&bad), Err(KeyError::NotPem { .. })));
    }
}
