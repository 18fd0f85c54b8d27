//! Large write bodies in files of their own: a recorded take or an exported mix posted offline is
//! written to `DATA_DIR/spool/` as it arrives, never held whole in memory or put into RocksDB, and sent
//! from the file when it is replayed.
//!
//! Promises: a spool file is fsynced and renamed into place (and the rename made durable) before the
//! outbox record naming it is written, so an acknowledged write always has its whole body. A file still
//! being written lives in `spool/tmp/` and is removed at the next open (a kill -9 while spooling leaves no
//! item and, after the restart, no file). Files no record names (a crash between the rename and the
//! record's commit, or after a record's removal) are removed at open too.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The spool directory.
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens `DATA_DIR/spool`, removing files of interrupted spooling.
    pub fn open(data_dir: &Path) -> io::Result<Spool> {
        let dir = data_dir.join("spool");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        for f in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(f.path());
        }
        Ok(Spool { dir })
    }

    /// A new spool file, written in `spool/tmp/` until [`SpoolWriter::finish`].
    pub fn begin(&self) -> io::Result<SpoolWriter> {
        let name = format!("{:032x}", rand::random::<u128>());
        let tmp = self.dir.join("tmp").join(&name);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(SpoolWriter {
            file: io::BufWriter::with_capacity(64 << 10, file),
            tmp,
            dest: self.dir.join(&name),
            name,
            len: 0,
        })
    }

    /// Where a finished spool file is.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        // Only names this module made: 32 hex digits, never a path.
        (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(name))
    }

    /// Removes a spool file (its record is gone).
    pub fn remove(&self, name: &str) {
        if let Some(p) = self.path(name) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %p.display(), error = %e, "removing a spool file failed");
                }
            }
        }
    }

    /// Removes finished spool files no record names. Returns how many.
    pub fn sweep(&self, named: &HashSet<String>) -> io::Result<usize> {
        let mut n = 0;
        for f in std::fs::read_dir(&self.dir)?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if self.path(&name).is_some() && !named.contains(&name) {
                std::fs::remove_file(f.path())?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A spool file being written.
pub struct SpoolWriter {
    file: io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    name: String,
    len: u64,
}

impl SpoolWriter {
    /// Appends bytes (blocking).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the file durable under its final name and returns that name (blocking).
    pub fn finish(self) -> io::Result<(String, u64)> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest)?;
        if let Some(dir) = self.dest.parent() {
            crate::platform::sync_dir(dir)?;
        }
        Ok((self.name, self.len))
    }

    /// Gives up on the file (the body was not queued).
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = std::fs::remove_file(tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_files_are_whole_named_and_swept_when_unnamed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.begin().unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        let (name, len) = w.finish().unwrap();
        assert_eq!(len, 11);
        assert_eq!(std::fs::read(spool.path(&name).unwrap()).unwrap(), b"hello world");
        // An interrupted one is gone at the next open.
        let mut half = spool.begin().unwrap();
        half.write(b"par").unwrap();
        drop(half);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("spool/tmp")).unwrap().count(), 0);
        assert_eq!(spool.sweep(&HashSet::from([name.clone()])).unwrap(), 0);
        assert_eq!(spool.sweep(&HashSet::new()).unwrap(), 1);
        assert!(spool.path("../x").is_none());
    }
}
