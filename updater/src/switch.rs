//! The switch (SPEC §6 step 8): `current` is replaced by renaming a fresh symlink over
//! it, then the root directory is fsynced. A reader sees the old or the new target,
//! never neither; after a crash the rename either happened or it did not.

use std::path::Path;

use molt_host::HostLayout;
use molt_host::state::{StateError, sync_dir};
use molt_schema::Version;

/// Points `current` at `versions/<v>` atomically and durably.
pub fn point_current(layout: &HostLayout, v: &Version) -> Result<(), StateError> {
    let root = layout.root();
    let tmp = root.join(format!(".current.{}.tmp", std::process::id()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io {
            action,
            path,
            source,
        }
    };
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("versions").join(v.to_string()), &tmp)
        .map_err(io("create the symlink", &tmp))?;
    std::fs::rename(&tmp, layout.current_link())
        .map_err(io("rename over", &layout.current_link()))?;
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_atomically_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        let (a, b): (Version, Version) = ("1.0.0".parse().unwrap(), "2.0.0".parse().unwrap());
        for v in [&a, &b] {
            std::fs::create_dir_all(layout.version_dir(v)).unwrap();
            std::fs::write(layout.valid_marker(v), b"").unwrap();
        }
        point_current(&layout, &a).unwrap();
        assert_eq!(layout.current_version(), Some(a.clone()));
        point_current(&layout, &b).unwrap();
        assert_eq!(layout.current_version(), Some(b));
        point_current(&layout, &a).unwrap();
        assert_eq!(layout.current_version(), Some(a));
        // no temporary links left behind
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    }
}
