//! The log writer: request threads append whole lines to one shared buffer and never wait for the
//! output; a thread of its own writes the buffer out in batches.
//!
//! Promises: every line is written whole and in the order it was appended; a line is written at most
//! [`WINDOW`] after it was appended (the writer gathers lines for that long after the first one, so a
//! busy proxy makes one write for many lines and wakes the writer about fifty times a second, not once
//! per line; an idle one makes no wake-up at all); past `cap` bytes waiting, new lines are dropped and
//! counted, so a slow or blocked output never holds a request nor grows memory without bound; dropping
//! the [`Guard`] writes out everything appended before it.
//! (tracing-appender's non-blocking writer, used before, woke its thread for every line: about 9 % of a
//! hit's CPU with the request log on.)

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer gathers lines after the first one before writing them.
pub const WINDOW: Duration = Duration::from_millis(20);

/// A batch buffer larger than this is not kept for the next batch (memory at rest stays small).
const KEEP_CAPACITY: usize = 256 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    ready: Condvar,
    cap: usize,
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The appending side (cheap to clone): each `write` call is one whole line.
#[derive(Clone)]
pub struct LineWriter {
    shared: Arc<Shared>,
}

impl LineWriter {
    /// Lines dropped so far because `cap` bytes were waiting, or because the output failed.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut buf = self.shared.lock();
        if buf.len() + line.len() > self.shared.cap {
            drop(buf);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            // Reported as written: a dropped line is counted, never retried in pieces.
            return Ok(line.len());
        }
        let first = buf.is_empty();
        buf.extend_from_slice(line);
        drop(buf);
        if first {
            self.shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stops the writer thread when dropped, after it has written out every line appended before.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Under the lock: the writer is either about to check `stop` or waiting, never in between.
        drop(self.shared.lock());
        self.shared.ready.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the writer thread over `out`; at most `cap` bytes of lines wait for it.
pub fn spawn<W: Write + Send + 'static>(out: W, cap: usize, thread_name: &str) -> io::Result<(LineWriter, Guard)> {
    let shared = Arc::new(Shared {
        buf: Mutex::new(Vec::new()),
        ready: Condvar::new(),
        cap,
        dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || write_batches(&worker, out))?;
    Ok((
        LineWriter { shared: shared.clone() },
        Guard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        {
            let mut buf = shared.lock();
            while buf.is_empty() && !shared.stop.load(Ordering::Relaxed) {
                buf = shared.ready.wait(buf).unwrap_or_else(|p| p.into_inner());
            }
            if buf.is_empty() {
                return;
            }
        }
        if !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(WINDOW);
        }
        std::mem::swap(&mut *shared.lock(), &mut batch);
        // A failed write loses this batch (counted); later ones are tried again (stderr may recover).
        if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            let lines = batch.iter().filter(|b| **b == b'\n').count().max(1);
            shared.dropped.fetch_add(lines as u64, Ordering::Relaxed);
        }
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_are_written_whole_in_order_and_all_out_at_drop() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone(), 1 << 20, "test-log").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        w.write_all(format!("thread {t} line {i:04} {}\n", "x".repeat(40)).as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..500)
                .map(|i| format!("thread {t} line {i:04} {}", "x".repeat(40)))
                .collect();
            assert_eq!(mine, expected, "whole and in order");
        }
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn past_the_cap_lines_are_dropped_whole_and_counted_and_writing_resumes() {
        /// An output that blocks until released: the stalled disk.
        struct Stalled(Arc<(Mutex<bool>, Condvar)>, Sink);
        impl Write for Stalled {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut g = open.lock().unwrap();
                while !*g {
                    g = cv.wait(g).unwrap();
                }
                self.1.write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (mut writer, guard) = spawn(Stalled(gate.clone(), sink.clone()), 100, "test-log").unwrap();
        writer.write_all(b"first line\n").unwrap();
        // The writer takes the first batch and blocks on it; what follows waits in the buffer.
        std::thread::sleep(WINDOW * 3);
        let line = b"0123456789012345678901234567890123456789\n";
        for _ in 0..5 {
            writer.write_all(line).unwrap(); // never blocks
        }
        assert_eq!(writer.dropped_lines(), 3, "two 41-byte lines fit in 100 bytes");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        writer.write_all(b"after\n").unwrap();
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let line = std::str::from_utf8(line).unwrap();
        assert_eq!(out, format!("first line\n{line}{line}after\n"));
    }

    #[test]
    fn an_idle_writer_writes_nothing_and_stops_at_once() {
        let sink = Sink::default();
        let (_writer, guard) = spawn(sink.clone(), 1024, "test-log").unwrap();
        drop(guard);
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
