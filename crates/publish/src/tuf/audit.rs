//! A full audit of a repository on disk: every file, not only the ones a host reads.
//!
//! A host reads the current metadata and the targets it needs; superseded metadata and
//! older targets stay in the repository (they are immutable and may still be served to
//! hosts mid-update). The audit checks those too: each metadata file parses, carries the
//! version its name says, and is validly signed under some root of the repository's
//! chain; each target file hashes to the digest in its name.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tough::schema::{Role, Root, Signed, Snapshot, Targets, Timestamp};

use molt_schema::artifact::Sha256;

/// One problem the audit found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditIssue {
    /// The path, relative to the repository.
    pub file: String,
    pub reason: String,
}

/// Audits the repository at `repo`; an empty list means every file checked out.
pub fn audit(repo: &Path) -> Vec<AuditIssue> {
    let mut issues = Vec::new();
    let metadata = repo.join("metadata");
    let mut roots: Vec<(u64, Root)> = Vec::new();
    let mut others: Vec<PathBuf> = Vec::new();
    for path in files_under(&metadata) {
        let name = file_name(&path);
        if let Some(v) = name
            .strip_suffix(".root.json")
            .and_then(|v| v.parse::<u64>().ok())
        {
            match read_signed::<Root>(&path) {
                Ok(root) if root.signed.version.get() != v => issues.push(issue(
                    repo,
                    &path,
                    format!("says version {}", root.signed.version),
                )),
                Ok(root) => {
                    if let Err(e) = root.signed.verify_role(&root) {
                        issues.push(issue(
                            repo,
                            &path,
                            format!("not signed by its own root keys: {e}"),
                        ));
                    }
                    roots.push((v, root.signed));
                }
                Err(reason) => issues.push(issue(repo, &path, reason)),
            }
        } else {
            others.push(path);
        }
    }
    for path in others {
        let name = file_name(&path);
        let reason = if let Some(v) = name.strip_suffix(".targets.json") {
            check_role::<Targets>(&path, v, &roots)
        } else if let Some(v) = name.strip_suffix(".snapshot.json") {
            check_role::<Snapshot>(&path, v, &roots)
        } else if name == "timestamp.json" {
            check_role::<Timestamp>(&path, "", &roots)
        } else {
            Some("not a file a TUF repository holds".to_owned())
        };
        if let Some(reason) = reason {
            issues.push(issue(repo, &path, reason));
        }
    }
    let targets = repo.join("targets");
    for path in files_under(&targets) {
        let rel = path
            .strip_prefix(&targets)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((digest, _name)) = rel.split_once('.') else {
            issues.push(issue(
                repo,
                &path,
                "target file without a digest prefix".to_owned(),
            ));
            continue;
        };
        match (digest.parse::<Sha256>(), std::fs::read(&path)) {
            (Err(_), _) => issues.push(issue(
                repo,
                &path,
                "target file without a digest prefix".to_owned(),
            )),
            (_, Err(e)) => issues.push(issue(repo, &path, format!("cannot be read: {e}"))),
            (Ok(want), Ok(bytes)) => {
                let got = Sha256::digest(&bytes);
                if got != want {
                    issues.push(issue(
                        repo,
                        &path,
                        format!("hash mismatch: its name says {want}, its content hashes to {got}"),
                    ));
                }
            }
        }
    }
    issues
}

fn check_role<T: Role + Serialize + DeserializeOwned>(
    path: &Path,
    version: &str,
    roots: &[(u64, Root)],
) -> Option<String> {
    let signed = match read_signed::<T>(path) {
        Ok(s) => s,
        Err(reason) => return Some(reason),
    };
    if !version.is_empty() && version != signed.signed.version().to_string() {
        return Some(format!("says version {}", signed.signed.version()));
    }
    if roots
        .iter()
        .any(|(_, root)| root.verify_role(&signed).is_ok())
    {
        None
    } else {
        Some(format!(
            "{} signatures do not verify under any root of the chain",
            T::TYPE
        ))
    }
}

fn read_signed<T: DeserializeOwned>(path: &Path) -> Result<Signed<T>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("malformed: {e}"))
}

fn issue(repo: &Path, path: &Path, reason: String) -> AuditIssue {
    AuditIssue {
        file: path
            .strip_prefix(repo)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        reason,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}
