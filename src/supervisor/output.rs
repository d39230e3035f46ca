//! A child's output in the log: mcp-proxy's standard output and standard error (where
//! its stdio server's standard error goes too), line by line, each line logged with the
//! server's name (`server`) and the stream (`stream`), at info level under the target
//! `mcpmux::child`.
//!
//! Bounded, and never in the child's way: a reader task drains the pipe as fast as the
//! child writes, whatever the log does, and hands each line to a logger task through
//! a queue of [`QUEUE_LINES`] lines of at most [`MAX_LINE`] bytes (a longer line is cut
//! there, marked, and the rest of it skipped). When the queue is full (the log is
//! slower than the child) the line is dropped and counted: in
//! `mcpmux_child_log_lines_dropped_total`, and in a warning that the logger writes at
//! most once per [`REPORT_INTERVAL`]. So a child flooding its output costs at most about 1 MiB per
//! stream, and never blocks on a full pipe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// The longest line passed to the log; the rest of a longer one is skipped.
pub const MAX_LINE: usize = 8 * 1024;
/// Lines waiting for the log, per stream; more are dropped.
pub const QUEUE_LINES: usize = 128;
/// How much is read from the pipe at once.
const READ_CHUNK: usize = 8 * 1024;
/// How often, at most, dropped lines are reported in the log.
pub const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Passes `pipe` (the child's `stream`, `"stdout"` or `"stderr"`) to the log, in two
/// tasks that end at the end of the pipe.
pub fn capture<R>(server: &Arc<str>, stream: &'static str, pipe: Option<R>, metrics: &Metrics)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let Some(pipe) = pipe else { return };
    let (lines, queue) = mpsc::channel(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let queued = Queue {
        lines,
        dropped: dropped.clone(),
        server: server.clone(),
        stream,
        metrics: metrics.clone(),
    };
    tokio::spawn(read_lines(pipe, move |line| queued.offer(line)));
    tokio::spawn(log_lines(queue, dropped, server.clone(), stream));
}

/// The reader's end of the queue.
struct Queue {
    lines: mpsc::Sender<String>,
    /// Dropped since the logger last reported it.
    dropped: Arc<AtomicU64>,
    server: Arc<str>,
    stream: &'static str,
    metrics: Metrics,
}

impl Queue {
    /// Queues `line`, or drops and counts it when the queue is full.
    fn offer(&self, line: String) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.lines.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            let (server, stream) = (&self.server, self.stream);
            self.metrics.child_lines_dropped(server, stream, 1);
        }
    }
}

/// Reads `pipe` to its end, giving each line (without its end of line, cut at
/// [`MAX_LINE`] bytes, made printable) to `emit`. Never waits for anything but the pipe.
async fn read_lines<R: AsyncRead + Unpin>(mut pipe: R, mut emit: impl FnMut(String)) {
    let mut chunk = vec![0; READ_CHUNK];
    let mut line: Vec<u8> = Vec::new();
    // True while the rest of a line that was cut is skipped.
    let mut skipping = false;
    loop {
        let read = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for piece in chunk[..read].split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            if !skipping {
                let room = MAX_LINE - line.len();
                if text.len() > room {
                    line.extend_from_slice(&text[..room]);
                    let mut cut = printable(&line);
                    cut.push_str(" [line cut]");
                    emit(cut);
                    line.clear();
                    skipping = true;
                } else {
                    line.extend_from_slice(text);
                }
            }
            if ends {
                if !skipping {
                    emit(printable(&line));
                }
                line.clear();
                skipping = false;
            }
        }
    }
    if !line.is_empty() && !skipping {
        emit(printable(&line));
    }
}

/// The line as text that cannot disturb a terminal or a log collector: invalid UTF-8
/// replaced, a final `\r` removed, other control characters escaped (`\u{1b}`).
fn printable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Logs the queued lines until the reader is done, and reports the lines dropped
/// (every [`REPORT_INTERVAL`] while there are any, and at the end).
async fn log_lines(
    mut queue: mpsc::Receiver<String>,
    dropped: Arc<AtomicU64>,
    server: Arc<str>,
    stream: &'static str,
) {
    let report = || {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(target: "mcpmux::child", server = %server, stream, dropped = lost, "{lost} lines of the child's {stream} were dropped: the log could not keep up");
        }
    };
    let mut reports = tokio::time::interval(REPORT_INTERVAL);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            line = queue.recv() => match line {
                Some(line) => tracing::info!(target: "mcpmux::child", server = %server, stream, "{line}"),
                None => break,
            },
            _ = reports.tick() => report(),
        }
    }
    report();
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    async fn lines_of(input: &'static [u8]) -> Vec<String> {
        let mut lines = Vec::new();
        read_lines(input, |line| lines.push(line)).await;
        lines
    }

    #[tokio::test]
    async fn lines_are_split_cut_and_made_printable() {
        assert_eq!(
            lines_of(b"one\ntwo\r\n\nlast").await,
            ["one", "two", "", "last"]
        );
        assert_eq!(
            lines_of(b"\x1b[31mred\x1b[0m\tand \xff\n").await,
            ["\\u{1b}[31mred\\u{1b}[0m\tand \u{fffd}"]
        );
        let long: &'static [u8] = Box::leak(
            [vec![b'a'; MAX_LINE + 10_000], b"\nafter\n".to_vec()]
                .concat()
                .into_boxed_slice(),
        );
        let lines = lines_of(long).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], format!("{} [line cut]", "a".repeat(MAX_LINE)));
        assert_eq!(lines[1], "after");
    }

    #[tokio::test]
    async fn a_flooding_child_is_read_to_its_end_and_the_excess_is_counted() {
        // 200000 lines while nobody takes any from the queue: the child must still
        // finish (its pipe is drained), the queue keeps QUEUE_LINES, the rest is counted.
        const LINES: u64 = 200_000;
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", &format!("yes flood | head -n {LINES} >&2")])
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let (lines, mut queue) = mpsc::channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let metrics = Metrics::new();
        let queued = Queue {
            lines,
            dropped: dropped.clone(),
            server: Arc::from("flood"),
            stream: "stderr",
            metrics: metrics.clone(),
        };
        read_lines(child.stderr.take().unwrap(), |line| queued.offer(line)).await;
        assert!(child.wait().await.unwrap().success());
        let mut kept = 0;
        while let Ok(line) = queue.try_recv() {
            assert_eq!(line, "flood");
            kept += 1;
        }
        assert_eq!(kept, QUEUE_LINES as u64);
        assert_eq!(dropped.load(Ordering::Relaxed), LINES - kept);
        let text = metrics.render();
        let sample = format!(
            "mcpmux_child_log_lines_dropped_total{{server=\"flood\",stream=\"stderr\"}} {}",
            LINES - kept
        );
        assert!(text.contains(&sample), "{text}");
    }
}
