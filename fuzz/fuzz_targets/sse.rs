//! Fuzzes `upstream::sse::SseParser` with arbitrary bytes cut into arbitrary chunks.
//!
//! Input layout: byte 0-1 pick `max_event_bytes` (0..=1023), byte 2 says how many of the
//! following bytes are chunk lengths (0..=15, cycled; 0 = empty chunk), the rest is the
//! stream. Invariants checked (besides "never panics"):
//! - every event's data is at most `max_event_bytes`, its type is never empty;
//! - after an error every later feed returns the same error;
//! - when the stream is fed whole and chunked and both succeed, they agree on the events,
//!   the last event id, `has_partial`, comments and retry;
//! - what the parser keeps between feeds stays within a constant factor of
//!   `max_event_bytes` (measured with a counting allocator), whatever the stream length.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use libfuzzer_sys::fuzz_target;
use mcpmux::upstream::sse::{SseError, SseEvent, SseParser};

/// Bytes currently allocated through Rust's allocator (libFuzzer's own C++ allocations
/// do not go through it).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The slack `SseParser` allows one line beyond `max_event_bytes` (`LINE_SLACK`).
const LINE_SLACK: usize = 256;

struct Run {
    events: Vec<SseEvent>,
    result: Result<(), SseError>,
    last_event_id: Option<String>,
    has_partial: bool,
    comments: u64,
    retry: Option<u64>,
}

fn run<'a>(max: usize, chunks: impl Iterator<Item = &'a [u8]>) -> Run {
    let bound = 10 * (max + LINE_SLACK) + 1024;
    let baseline = LIVE.load(Ordering::Relaxed);
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    let mut result = Ok(());
    for chunk in chunks {
        let mut out = Vec::new();
        let fed = parser.feed(chunk, &mut out);
        for event in &out {
            assert!(event.data.len() <= max, "event data over the limit: {}", event.data.len());
            assert!(!event.event.is_empty(), "event with an empty type");
        }
        events.append(&mut out);
        drop(out);
        // What the parser keeps: all live bytes not in `events` (nor in the baseline).
        let in_events: usize = events
            .iter()
            .map(|e| e.data.capacity() + e.event.capacity() + e.id.as_ref().map_or(0, |i| i.capacity()))
            .sum::<usize>()
            + events.capacity() * std::mem::size_of::<SseEvent>();
        let kept = LIVE.load(Ordering::Relaxed) - baseline - in_events as isize;
        assert!(
            kept <= bound as isize,
            "parser keeps {kept} bytes between feeds with max_event_bytes = {max}"
        );
        match (&result, fed) {
            (Ok(()), fed) => result = fed,
            (Err(first), fed) => assert_eq!(fed.as_ref(), Err(first), "error not repeated"),
        }
    }
    Run {
        events,
        result,
        last_event_id: parser.last_event_id().map(str::to_owned),
        has_partial: parser.has_partial(),
        comments: parser.comments_seen(),
        retry: parser.retry(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = usize::from(u16::from_le_bytes([data[0], data[1]]) % 1024);
    let n = usize::from(data[2] % 16);
    let rest = &data[3..];
    let (lengths, stream) = rest.split_at(n.min(rest.len()));

    let whole = run(max, std::iter::once(stream));

    let mut chunks: Vec<&[u8]> = Vec::new();
    if lengths.iter().all(|&l| l == 0) {
        // No usable lengths: empty chunks around the whole stream.
        chunks.extend([&stream[..0], stream, &stream[..0]]);
    } else {
        let mut at = 0;
        for &len in lengths.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + usize::from(len)).min(stream.len());
            chunks.push(&stream[at..end]);
            at = end;
        }
    }
    let chunked = run(max, chunks.iter().copied());

    if whole.result.is_ok() && chunked.result.is_ok() {
        assert_eq!(whole.events, chunked.events, "chunking changed the events");
        assert_eq!(whole.last_event_id, chunked.last_event_id);
        assert_eq!(whole.has_partial, chunked.has_partial);
        assert_eq!(whole.comments, chunked.comments);
        assert_eq!(whole.retry, chunked.retry);
    }
});
