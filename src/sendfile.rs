//! Zero-copy answers from the blob store: the registry of memory regions that are read-only maps of blob
//! files, and the connection type that sends such regions with `sendfile(2)` instead of copying them.
//!
//! hyper stays the HTTP implementation: it frames the response and hands its buffers to the connection
//! as usual. A body served from the store is a slice of a blob map; when a buffer hyper writes lies inside
//! a registered map, the connection asks the kernel to send those bytes straight from the file (page
//! cache to socket), so the process neither copies them into the socket nor faults the pages in. Response
//! heads before such a body go out with `MSG_MORE` so head and body share segments.
//!
//! Only where [`crate::platform::zero_copy_available`] says so; elsewhere connections get no regions and
//! every write is an ordinary one.
//!
//! Promises: the bytes on the wire are exactly the bytes hyper asked to write (a region is registered
//! only for a map of the file it names, and unregistered before the map goes away); any buffer that is
//! not inside a region is written the ordinary way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Memory regions that are maps of files: start address → (length, file).
#[derive(Default)]
pub struct FileRegions {
    map: Mutex<BTreeMap<usize, (usize, Arc<File>)>>,
    /// Bytes sent with `sendfile(2)` so far (stats).
    sent: std::sync::atomic::AtomicU64,
}

impl FileRegions {
    /// Records that `len` bytes at `start` are the file's bytes from offset 0.
    pub fn register(&self, start: *const u8, len: usize, file: Arc<File>) {
        if len > 0 {
            self.lock().insert(start as usize, (len, file));
        }
    }

    /// Forgets the region starting at `start` (before its map is unmapped).
    pub fn unregister(&self, start: *const u8) {
        self.lock().remove(&(start as usize));
    }

    /// Bytes sent from files so far.
    pub fn sent_bytes(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Regions registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, (usize, Arc<File>)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file and offset of `buf` if it lies wholly inside a region.
    fn find(&self, buf: &[u8]) -> Option<(Arc<File>, u64)> {
        if buf.is_empty() {
            return None;
        }
        let at = buf.as_ptr() as usize;
        let map = self.lock();
        let (start, (len, file)) = map.range(..=at).next_back()?;
        let end = start.checked_add(*len)?;
        (at.checked_add(buf.len())? <= end).then(|| (file.clone(), (at - start) as u64))
    }
}

/// A client connection: a TCP stream whose writes of mapped blob bytes become `sendfile(2)` calls.
pub struct ConnIo {
    stream: TcpStream,
    regions: Option<Arc<FileRegions>>,
}

impl ConnIo {
    /// Wraps `stream`; without `regions` every write is an ordinary one.
    pub fn new(stream: TcpStream, regions: Option<Arc<FileRegions>>) -> ConnIo {
        ConnIo { stream, regions }
    }

    /// Runs a non-blocking write syscall when the socket is writable.
    fn poll_sys(&self, cx: &mut Context<'_>, mut op: impl FnMut() -> io::Result<usize>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_io(Interest::WRITABLE, &mut op) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_sendfile(&self, cx: &mut Context<'_>, file: &File, offset: u64, len: usize) -> Poll<io::Result<usize>> {
        let sent = ready!(self.poll_sys(cx, || crate::platform::sendfile(&self.stream, file, offset, len)))?;
        if let Some(r) = &self.regions {
            r.sent.fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Poll::Ready(Ok(sent))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some((file, offset)) = self.regions.as_ref().and_then(|r| r.find(buf)) {
            return self.poll_sendfile(cx, &file, offset, buf.len());
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(regions) = self.regions.as_ref().filter(|r| !r.is_empty()) else {
            return Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        };
        let found = bufs
            .iter()
            .enumerate()
            .find_map(|(i, b)| regions.find(b).map(|(f, o)| (i, f, o)));
        match found {
            None => Pin::new(&mut self.stream).poll_write_vectored(cx, bufs),
            Some((0, file, offset)) => self.poll_sendfile(cx, &file, offset, bufs[0].len()),
            // The head of a stored answer: more follows at once, so let the kernel fill segments.
            Some((1, _, _)) => {
                let head: &[u8] = &bufs[0];
                self.poll_sys(cx, || crate::platform::send_more(&self.stream, head))
            }
            // Partial vectored writes are allowed: hyper calls again for the rest.
            Some((i, _, _)) => Pin::new(&mut self.stream).poll_write_vectored(cx, &bufs[..i]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_buffers_wholly_inside_a_region_are_found_with_their_offset() {
        let regions = FileRegions::default();
        let backing = [7u8; 100];
        let file = Arc::new(tempfile::tempfile().unwrap());
        regions.register(backing.as_ptr(), 100, file);
        assert_eq!(regions.find(&backing[..]).map(|(_, o)| o), Some(0));
        assert_eq!(regions.find(&backing[40..60]).map(|(_, o)| o), Some(40));
        assert_eq!(regions.find(&backing[99..]).map(|(_, o)| o), Some(99));
        assert!(regions.find(&backing[100..]).is_none(), "empty");
        let other = [7u8; 100];
        assert!(regions.find(&other[..10]).is_none(), "another allocation");
        regions.unregister(backing.as_ptr());
        assert!(regions.find(&backing[..]).is_none());
        assert!(regions.is_empty());
    }
}
