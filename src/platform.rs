//! Everything that differs between Linux, macOS and Windows, in one place.
//!
//! Each function here has a portable fallback, and the rest of the crate calls only these. What differs:
//! - positioned reads and writes of blob files (`pread`/`pwrite` on Unix, `seek_read`/`seek_write` on
//!   Windows);
//! - durable renames (a directory fsync on Unix only);
//! - owner-only files and directories (modes 0600/0700 on Unix; on Windows a file under the user's
//!   profile is private by its inherited ACL, and there is no mode to set);
//! - the OS error codes that mean "disk full";
//! - zero-copy sends (`sendfile(2)` and `MSG_MORE`, Linux and Android only; elsewhere the ordinary write
//!   path, which the tests also exercise on Linux with the config's `zero_copy = false`);
//! - the signals that stop Outpost (SIGINT/SIGTERM; Ctrl-C on Windows) and reload its config (SIGHUP;
//!   none on Windows, where `outpost reload` through the admin API does the same).

use std::fs::File;
use std::io;
use std::path::Path;

/// Reads exactly `buf.len()` bytes of `file` at `offset`, without moving a shared cursor on Unix.
///
/// On Windows `seek_read` moves the handle's cursor; every read of a blob names its offset, so no reader
/// depends on it.
pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file is shorter than expected",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` into `file` at `offset` (a header rewritten in place).
pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match write_at(file, buf, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, offset)
}

#[cfg(not(any(unix, windows)))]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write(buf)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(not(any(unix, windows)))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read(buf)
}

/// Makes a rename into `dir` durable: fsync of the directory on Unix. Windows cannot open a directory
/// as a file (and NTFS journals the rename itself), so there it does nothing.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

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

/// Options that create a file only its owner can read (secrets such as the admin token).
pub fn private_file_options() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut opts = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts
}

/// True when `code` is the OS's "disk full" or "quota exceeded" error number.
pub fn is_disk_full_code(code: i32) -> bool {
    // ENOSPC and EDQUOT on Linux (EDQUOT is 69 on macOS and the BSDs); ERROR_DISK_FULL and
    // ERROR_HANDLE_DISK_FULL on Windows.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let codes: &[i32] = &[28, 122];
    #[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
    let codes: &[i32] = &[28, 69];
    #[cfg(not(unix))]
    let codes: &[i32] = &[112, 39];
    codes.contains(&code)
}

/// Whether stored bodies can go from file to socket without a copy here: only where the kernel offers
/// `sendfile(2)` to sockets with offsets (Linux, Android). The config's `zero_copy = false` turns it off,
/// which is how the tests exercise the portable path on Linux.
pub const ZERO_COPY: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Sends up to `len` bytes of `file` from `offset` to `socket` (non-blocking); `Unsupported` where the
/// platform has no such call (callers do not ask there: see [`ZERO_COPY`]).
pub fn sendfile(socket: &tokio::net::TcpStream, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut at = offset;
        rustix::fs::sendfile(socket, file, Some(&mut at), len).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (socket, file, offset, len);
        Err(io::Error::new(io::ErrorKind::Unsupported, "no sendfile here"))
    }
}

/// Writes `head` to `socket` telling the kernel more follows at once (`MSG_MORE`), so a response head
/// and the body sent right after share segments; elsewhere an ordinary non-blocking write.
pub fn send_more(socket: &tokio::net::TcpStream, head: &[u8]) -> io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::net::send(socket, head, rustix::net::SendFlags::MORE).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        socket.try_write(head)
    }
}

/// Resolves when the process is asked to stop: SIGINT or SIGTERM on Unix, Ctrl-C (and console close)
/// elsewhere. The handlers are registered when this is called, so a signal right after start is not lost.
pub fn stop_requested() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A stream of reload requests: SIGHUP on Unix. `None` where the platform has no such signal (Windows:
/// use the admin API's reload instead).
pub struct ReloadSignal {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl ReloadSignal {
    /// Starts listening (so SIGHUP no longer ends the process); `None` where there is no such signal.
    pub fn listen() -> Option<ReloadSignal> {
        #[cfg(unix)]
        {
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()?;
            Some(ReloadSignal { hup })
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Waits for the next reload request; `None` once no more can come.
    pub async fn next(&mut self) -> Option<()> {
        #[cfg(unix)]
        {
            self.hup.recv().await
        }
        #[cfg(not(unix))]
        {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positioned_reads_read_exactly_and_report_short_files() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"0123456789").unwrap();
        let mut buf = [0u8; 4];
        read_exact_at(&f, &mut buf, 3).unwrap();
        assert_eq!(&buf, b"3456");
        read_exact_at(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"0123");
        let e = read_exact_at(&f, &mut buf, 8).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        write_all_at(&f, b"ab", 1).unwrap();
        read_exact_at(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"0ab3");
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_dir_is_owner_only_and_a_loose_one_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/data");
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(open_to_others(&dir), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(open_to_others(&dir), Some(0o755));
    }

    #[test]
    fn disk_full_codes() {
        assert!(is_disk_full_code(if cfg!(windows) { 112 } else { 28 }));
        assert!(!is_disk_full_code(2));
    }
}
