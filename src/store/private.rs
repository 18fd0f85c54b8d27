//! Owner-only data dirs. The data dir holds cached answers, queued requests with their credentials and
//! the admin token, so other local users must not read it. RocksDB creates its files with the process
//! umask (often 0644), so what protects them is the directory: a new data dir is created 0700, and an
//! existing one that others can enter is reported at start.
//!
//! Unix only: on Windows a directory under the user's profile is private to the user by its inherited
//! ACL, and there is no mode to set (the portable fallback creates the directory and reports nothing).

use std::io;
use std::path::Path;

/// Creates `dir` (and missing parents) with the new leaf readable by its owner only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// The permission bits of `dir` when users other than its owner may enter or read it (Unix), else `None`.
pub fn open_to_others(dir: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_data_dir_that_is_a_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let e = crate::store::Store::open(&file).err().unwrap().to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
    }

    #[test]
    fn a_new_data_dir_is_owner_only_and_a_loose_one_is_reported() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/data");
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(open_to_others(&dir), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(open_to_others(&dir), Some(0o755));
    }
}
