//! The access log writer: the request path appends its line to a buffer in memory (a
//! lock and a copy), and one background thread writes the buffer out 100 ms after its
//! first line, or sooner once 64 KiB wait; with nothing to write it sleeps (no timer).
//! A `write` per request, or a thread woken per request, cost more than the rest of the
//! request's own work. If the output stalls, lines beyond 4 MiB are dropped and counted
//! (a note says how many), never the requests.
use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::AccessLog;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 64 * 1024;
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

struct Inner {
    buf: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    /// The writer sleeps until a line arrives (set by the writer, read by the request path).
    idle: AtomicBool,
}

/// Writes what is still buffered and stops the writer thread when dropped.
pub struct FlushGuard {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

/// Start the writer thread; lines given to the returned `AccessLog` end up in `out`.
pub fn spawn(out: impl Write + Send + 'static) -> std::io::Result<(AccessLog, FlushGuard)> {
    let inner = Arc::new(Inner {
        buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
        dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        idle: AtomicBool::new(false),
    });
    let thread = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("switchyard-access-log".into())
            .spawn(move || run(&inner, out))?
    };
    let waker = thread.thread().clone();
    let log = {
        let inner = inner.clone();
        AccessLog::new(move |line| {
            let mut buf = inner.buf.lock();
            if buf.len() + line.len() > MAX_BUFFERED {
                drop(buf);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let was_empty = buf.is_empty();
            buf.extend_from_slice(line);
            let full = buf.len() >= FLUSH_AT;
            drop(buf);
            // The first line wakes the writer if it sleeps for want of lines (it then
            // waits out the batch window); a full buffer cuts the window short.
            if full || (was_empty && inner.idle.load(Ordering::Relaxed)) {
                waker.unpark();
            }
        })
    };
    Ok((
        log,
        FlushGuard {
            inner,
            thread: Some(thread),
        },
    ))
}

fn run(inner: &Inner, mut out: impl Write) {
    let mut spare = Vec::with_capacity(FLUSH_AT);
    loop {
        if !inner.stop.load(Ordering::Acquire) {
            // Idle means asleep, with no timer. `idle` is set before the buffer is checked
            // under its lock, so a line pushed after the check sees it and unparks us
            // (then `park` returns at once).
            inner.idle.store(true, Ordering::Relaxed);
            if inner.buf.lock().is_empty() && !inner.stop.load(Ordering::Acquire) {
                std::thread::park();
            }
            inner.idle.store(false, Ordering::Relaxed);
            // The batch window: lines that come within it go out in one write.
            let deadline = Instant::now() + FLUSH_EVERY;
            loop {
                let now = Instant::now();
                if now >= deadline || inner.stop.load(Ordering::Acquire) || inner.buf.lock().len() >= FLUSH_AT
                {
                    break;
                }
                std::thread::park_timeout(deadline - now);
            }
        }
        let stopping = inner.stop.load(Ordering::Acquire);
        std::mem::swap(&mut *inner.buf.lock(), &mut spare);
        let dropped = inner.dropped.swap(0, Ordering::Relaxed);
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            spare.clear();
        }
        if dropped > 0 {
            let _ = writeln!(out, "{dropped} access log lines dropped (output too slow)");
        }
        let _ = out.flush();
        if stopping {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (log, guard) = spawn(sink.clone()).unwrap();
        let line = b"request done request_id=x status=200\n";
        for _ in 0..10_000 {
            log.write(line);
        }
        drop(guard);
        let out = sink.0.lock();
        assert_eq!(out.len(), line.len() * 10_000);
        assert!(out.chunks(line.len()).all(|c| c == line));
    }

    #[test]
    fn lines_arrive_without_a_flush_from_the_caller() {
        let sink = Sink::default();
        let (log, _guard) = spawn(sink.clone()).unwrap();
        log.write(b"one\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.0.lock(), b"one\n");
    }

    /// Written when the writer has gone to sleep for want of lines (no timer wakes it).
    #[test]
    fn a_line_after_an_idle_spell_wakes_the_writer() {
        let sink = Sink::default();
        let (log, guard) = spawn(sink.clone()).unwrap();
        let wait = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !cond() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        for round in 0..3 {
            wait("the writer never went idle", &|| {
                guard.inner.idle.load(Ordering::Relaxed)
            });
            log.write(format!("line {round}\n").as_bytes());
            wait("line never written", &|| {
                sink.0.lock().ends_with(format!("line {round}\n").as_bytes())
            });
        }
        assert_eq!(&*sink.0.lock(), b"line 0\nline 1\nline 2\n");
    }
}
