//! Incremental parser for `text/event-stream` bodies (the WHATWG "event stream"
//! format), as MCP Streamable HTTP servers and mcp-proxy send them.
//!
//! This module owns the byte-level work of reading an event stream: splitting lines
//! across arbitrary chunk boundaries (inside a line, inside a multi-byte UTF-8
//! character, between the `\r` and `\n` of a CRLF), skipping a leading BOM, the
//! fields `event`, `data`, `id` and `retry`, comments (counted, for liveness),
//! dispatch on a blank line, the stream's last event id (for `Last-Event-ID` on
//! reconnection), a bound on the memory one event may take, and telling whether the
//! stream stopped inside an event. It knows nothing of HTTP or JSON-RPC.
//!
//! Deviations from a browser's `EventSource` that callers should know:
//! - An event block whose only `data:` line is empty (mcp-proxy's priming event,
//!   `id: X` + `data: `) is dispatched faithfully, as an [`SseEvent`] with
//!   `data == ""`. Callers that want JSON-RPC messages skip such events.
//! - An `id:` line takes effect as the last event id when its block ends (at the
//!   blank line), as in the spec, even if the block dispatches nothing; an empty `id:`
//!   value resets the last event id to `None`.
//! - Bytes that are not UTF-8 in an event's data, event type or id are an error
//!   ([`SseError::InvalidUtf8`]) rather than being replaced.

use std::borrow::Cow;
use std::mem;
use std::sync::Arc;

/// The UTF-8 byte order mark, skipped once at the very start of the stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How far past `max_event_bytes` one line (with the event's data and type) may go:
/// room for a field name and separator (`data: `) and short fields such as `id:` or
/// `event:` after a data payload that is exactly at the limit.
const LINE_SLACK: usize = 256;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type; `"message"` when the block had no (or an empty) `event:` field
    /// (then, and for `event: message`, nothing is allocated for it).
    pub event: Cow<'static, str>,
    /// The data lines of the block joined with `\n`. May be empty (see the module doc).
    pub data: String,
    /// The stream's last event id in force when this event was dispatched: the latest
    /// `id:` of this block or of an earlier one (ids persist, per the spec). Shared with
    /// the parser and the events after it that carry the same id.
    pub id: Option<Arc<str>>,
    /// The `retry:` value (milliseconds) given in this event's own block, if any.
    pub retry: Option<u64>,
}

/// Why an event stream cannot be read further.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// One event (its data plus the line being read) exceeds the configured bound.
    #[error("an event in the stream exceeds the limit of {limit} bytes")]
    EventTooLarge {
        /// The configured `max_event_bytes`.
        limit: usize,
    },
    /// An event's data, event type or id is not valid UTF-8.
    #[error("an event in the stream is not valid UTF-8")]
    InvalidUtf8,
}

impl SseError {
    /// A copy of this error, to repeat it on every feed after a failure.
    fn repeat(&self) -> Self {
        match self {
            Self::EventTooLarge { limit } => Self::EventTooLarge { limit: *limit },
            Self::InvalidUtf8 => Self::InvalidUtf8,
        }
    }
}

/// An incremental event-stream parser: feed it the body's chunks as they arrive.
///
/// Memory is bounded by `max_event_bytes`: the data of one event may be at most
/// `max_event_bytes` bytes (as dispatched, newlines between data lines included), and
/// each line, together with the data and event type accumulated before it, at most
/// `max_event_bytes` + 256 bytes. Past either, [`SseParser::feed`] returns
/// [`SseError::EventTooLarge`]. After any error the parser has dropped its buffers
/// and every later `feed` returns the same error: the stream must be abandoned.
#[derive(Debug)]
pub struct SseParser {
    /// The bound on one event, see the type's doc.
    max_event_bytes: usize,
    /// The start of a line whose end has not arrived yet. Before the BOM check is done,
    /// the stream's first bytes, a proper prefix of the BOM.
    line: Vec<u8>,
    /// The data buffer: each data line's value followed by `\n`.
    data: Vec<u8>,
    /// The event type buffer (empty means `message`).
    event_type: Vec<u8>,
    /// The last event id buffer: set by `id:` lines, committed at each blank line. Its
    /// capacity is kept from line to line; `has_id` says whether it holds an id.
    id_buffer: String,
    /// The id buffer holds an id (an empty `id:` value clears it).
    has_id: bool,
    /// The last event id string: the id buffer as of the latest blank line.
    last_event_id: Option<Arc<str>>,
    /// `retry:` given in the current block.
    block_retry: Option<u64>,
    /// The latest `retry:` given anywhere in the stream.
    retry: Option<u64>,
    /// A field line (not a comment) has been read since the last blank line.
    in_event: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next one ends nothing.
    pending_cr: bool,
    /// Whether the start of the stream has been checked for a BOM.
    bom_checked: bool,
    /// Comment lines seen.
    comments: u64,
    /// The error that stopped the parser, repeated on later feeds.
    failed: Option<SseError>,
}

impl SseParser {
    /// A parser whose events may hold at most `max_event_bytes` bytes of data.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            line: Vec::new(),
            data: Vec::new(),
            event_type: Vec::new(),
            id_buffer: String::new(),
            has_id: false,
            last_event_id: None,
            block_retry: None,
            retry: None,
            in_event: false,
            pending_cr: false,
            bom_checked: false,
            comments: 0,
            failed: None,
        }
    }

    /// Feeds one chunk; pushes every event it completes onto `out`, in order.
    ///
    /// A chunk may be split anywhere. On error, `out` keeps the events completed
    /// before the failing line, and the parser is stopped (see the type's doc).
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if let Some(err) = &self.failed {
            return Err(err.repeat());
        }
        let result = self.feed_inner(chunk, out);
        if let Err(err) = &result {
            self.failed = Some(err.repeat());
            self.line = Vec::new();
            self.data = Vec::new();
            self.event_type = Vec::new();
            self.in_event = false;
        }
        result
    }

    /// The last event id seen so far (for Last-Event-ID on reconnection).
    ///
    /// This is the id in force at the latest blank line: an `id:` line of a block that
    /// has not ended yet does not count, since its event has not been delivered.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// True when bytes of an event have been read but its terminating blank line has not.
    ///
    /// At the end of the stream this means the stream was cut inside an event, which
    /// per the spec is then discarded. Comment lines alone do not count; a comment
    /// line whose end has not arrived does.
    pub fn has_partial(&self) -> bool {
        self.in_event || !self.line.is_empty()
    }

    /// How many comment lines (such as mcp-proxy's `: keepalive`) have been read.
    pub fn comments_seen(&self) -> u64 {
        self.comments
    }

    /// The reconnection time the server asked for with its latest `retry:` field, in
    /// milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    fn feed_inner(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = chunk;
        if !self.bom_checked {
            rest = self.skip_bom(rest);
            if !self.bom_checked {
                return Ok(());
            }
        }
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if let [b'\n', after @ ..] = rest {
                rest = after;
            }
        }
        while !rest.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.check_line(self.line.len().saturating_add(rest.len()))?;
                self.line.extend_from_slice(rest);
                return Ok(());
            };
            let (part, terminator) = rest.split_at(end);
            if self.line.is_empty() {
                self.process_line(part, out)?;
            } else {
                self.check_line(self.line.len().saturating_add(part.len()))?;
                self.line.extend_from_slice(part);
                let line = mem::take(&mut self.line);
                let result = self.process_line(&line, out);
                // Keep the buffer's capacity for the next split line.
                self.line = line;
                self.line.clear();
                result?;
            }
            rest = match terminator {
                [b'\r', b'\n', after @ ..] => after,
                [b'\r'] => {
                    self.pending_cr = true;
                    &[]
                }
                [_, after @ ..] => after,
                [] => &[],
            };
        }
        Ok(())
    }

    /// Consumes the BOM (or as much of it as `chunk` holds) at the start of the stream,
    /// returning what follows it. Sets `bom_checked` once the question is settled.
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        // Invariant: `self.line` holds a proper prefix of the BOM (at most 2 bytes).
        let expected = BOM.get(self.line.len()..).unwrap_or_default();
        let take = expected.len().min(chunk.len());
        let (head, tail) = chunk.split_at(take);
        if !expected.starts_with(head) {
            // Not a BOM: what was held back is the start of the first line.
            self.bom_checked = true;
            return chunk;
        }
        if self.line.len() + take == BOM.len() {
            self.line.clear();
            self.bom_checked = true;
        } else {
            self.line.extend_from_slice(head);
        }
        tail
    }

    /// Fails when a line of `line_len` bytes, with the event's data and type so far,
    /// exceeds the bound.
    fn check_line(&self, line_len: usize) -> Result<(), SseError> {
        let used = self
            .data
            .len()
            .saturating_add(self.event_type.len())
            .saturating_add(line_len);
        if used > self.max_event_bytes.saturating_add(LINE_SLACK) {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    /// Interprets one complete line (without its line end).
    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            None if line.is_empty() => return self.dispatch(out),
            Some(0) => {
                self.comments += 1;
                return Ok(());
            }
            Some(colon) => {
                let (name, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        self.check_line(line.len())?;
        self.in_event = true;
        match name {
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            b"data" => {
                // The data as dispatched: what is there, this value; the newline pushed
                // after it is removed at dispatch or counted as the next line's separator.
                if self.data.len().saturating_add(value.len()) > self.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                self.data.reserve(value.len() + 1);
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            // An id containing NUL is ignored (falls through to the last arm).
            b"id" if !value.contains(&0) => {
                let id = std::str::from_utf8(value).map_err(|_| SseError::InvalidUtf8)?;
                self.id_buffer.clear();
                self.id_buffer.push_str(id);
                self.has_id = !id.is_empty();
            }
            // Only digits, so parsing fails only on overflow: then it is ignored.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|digits| digits.parse::<u64>().ok())
                {
                    self.block_retry = Some(ms);
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A blank line: commits the last event id, and dispatches the block's event if its
    /// data buffer is not empty.
    fn dispatch(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.in_event = false;
        let buffered = self.has_id.then_some(self.id_buffer.as_str());
        if self.last_event_id.as_deref() != buffered {
            self.last_event_id = buffered.map(Arc::from);
        }
        let retry = self.block_retry.take();
        if self.data.is_empty() {
            self.event_type.clear();
            return Ok(());
        }
        let mut data = mem::take(&mut self.data);
        data.pop(); // the data buffer always ends with the `\n` of its last line
        let data = String::from_utf8(data).map_err(|_| SseError::InvalidUtf8)?;
        let event = match self.event_type.as_slice() {
            b"" | b"message" => Cow::Borrowed("message"),
            other => Cow::Owned(
                std::str::from_utf8(other)
                    .map_err(|_| SseError::InvalidUtf8)?
                    .to_owned(),
            ),
        };
        // The type's buffer keeps its capacity for the next block.
        self.event_type.clear();
        out.push(SseEvent {
            event,
            data,
            id: self.last_event_id.clone(),
            retry,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    /// Feeds `chunks` in order to a fresh parser; returns the events and the parser.
    fn parse_chunks(chunks: &[&[u8]], max: usize) -> (Vec<SseEvent>, SseParser) {
        let mut parser = SseParser::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).expect("feed");
        }
        (out, parser)
    }

    fn parse(input: &[u8]) -> (Vec<SseEvent>, SseParser) {
        parse_chunks(&[input], BIG)
    }

    fn ev(event: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: Cow::Owned(event.to_owned()),
            data: data.to_owned(),
            id: id.map(Arc::from),
            retry: None,
        }
    }

    /// Parses `input` whole, byte by byte, and split at every single point; all must
    /// give the same events, which are returned.
    fn parse_every_way(input: &[u8]) -> Vec<SseEvent> {
        let (whole, parser) = parse(input);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        let (by_byte, by_byte_parser) = parse_chunks(&bytewise, BIG);
        assert_eq!(by_byte, whole, "byte by byte");
        assert_eq!(by_byte_parser.last_event_id(), parser.last_event_id());
        assert_eq!(by_byte_parser.has_partial(), parser.has_partial());
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            let (events, p) = parse_chunks(&[a, b], BIG);
            assert_eq!(events, whole, "split at {split}");
            assert_eq!(p.last_event_id(), parser.last_event_id());
            assert_eq!(p.comments_seen(), parser.comments_seen());
        }
        whole
    }

    #[test]
    fn mcp_proxy_message_shape() {
        let input =
            b"event: message\nid: abc_1_2\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        let events = parse_every_way(input);
        assert_eq!(
            events,
            vec![ev(
                "message",
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                Some("abc_1_2")
            )]
        );
        let (_, parser) = parse(input);
        assert_eq!(parser.last_event_id(), Some("abc_1_2"));
        assert!(!parser.has_partial());
    }

    #[test]
    fn priming_event_dispatches_empty_data() {
        let (events, parser) = parse(b"id: p1\ndata: \n\n");
        assert_eq!(events, vec![ev("message", "", Some("p1"))]);
        assert_eq!(parser.last_event_id(), Some("p1"));
        assert!(!parser.has_partial());
    }

    #[test]
    fn id_only_block_dispatches_nothing_but_sets_last_event_id() {
        let (events, parser) = parse(b"id: only\n\n");
        assert!(events.is_empty());
        assert_eq!(parser.last_event_id(), Some("only"));
        let (events, _) = parse(b"id: only\n\ndata: x\n\n");
        assert_eq!(events, vec![ev("message", "x", Some("only"))]);
    }

    #[test]
    fn keepalive_comment_is_counted_and_ignored() {
        let input = b": keepalive\n\n: keepalive\ndata: a\n: in the middle\ndata: b\n\n:\n";
        let events = parse_every_way(input);
        assert_eq!(events, vec![ev("message", "a\nb", None)]);
        let (_, parser) = parse(input);
        assert_eq!(parser.comments_seen(), 4);
        assert!(
            !parser.has_partial(),
            "a complete comment is not a partial event"
        );
        let (_, parser) = parse(b": keepal");
        assert!(parser.has_partial(), "a comment cut mid-line is");
    }

    #[test]
    fn crlf_and_lone_cr_line_endings() {
        for input in [
            &b"event: e\r\nid: 7\r\ndata: x\r\ndata: y\r\n\r\n"[..],
            &b"event: e\rid: 7\rdata: x\rdata: y\r\r"[..],
            &b"event: e\nid: 7\r\ndata: x\rdata: y\n\r"[..],
        ] {
            let events = parse_every_way(input);
            assert_eq!(events, vec![ev("e", "x\ny", Some("7"))], "{input:?}");
        }
        // `\r\r\n` is two line ends: the second event must not merge into the first.
        let events = parse_every_way(b"data: 1\r\r\ndata: 2\r\n\r\n");
        assert_eq!(
            events,
            vec![ev("message", "1", None), ev("message", "2", None)]
        );
    }

    #[test]
    fn cr_and_lf_split_across_chunks_are_one_line_end() {
        let (events, parser) = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], BIG);
        assert_eq!(events, vec![ev("message", "a\nb", None)]);
        assert!(!parser.has_partial());
        // A lone CR at a chunk end followed by an empty chunk and then LF.
        let (events, _) = parse_chunks(&[b"data: a\r", b"", b"\n", b"\r", b"", b"\n"], BIG);
        assert_eq!(events, vec![ev("message", "a", None)]);
        // CR at the chunk end, then a blank-line CR: dispatches.
        let (events, _) = parse_chunks(&[b"data: a\r", b"\r"], BIG);
        assert_eq!(events, vec![ev("message", "a", None)]);
    }

    #[test]
    fn multi_line_data() {
        let events = parse_every_way(b"data: line one\ndata: line two\ndata:\ndata: four\n\n");
        assert_eq!(
            events,
            vec![ev("message", "line one\nline two\n\nfour", None)]
        );
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        // `data` alone appends an empty line; `event` alone resets to the default.
        let events = parse_every_way(b"data\ndata\n\nevent\ndata: x\n\n");
        assert_eq!(
            events,
            vec![ev("message", "\n", None), ev("message", "x", None)]
        );
        let (events, _) = parse(b"data: y\nid\n\n");
        assert_eq!(events, vec![ev("message", "y", None)]);
    }

    #[test]
    fn no_space_after_colon_and_only_one_space_stripped() {
        let events = parse_every_way(b"event:ping\ndata:tight\ndata:  two spaces\nid:i d\n\n");
        assert_eq!(events, vec![ev("ping", "tight\n two spaces", Some("i d"))]);
    }

    #[test]
    fn colon_inside_value_and_unknown_fields() {
        let events = parse_every_way(b"foo: bar\ndata: a: b:c\nDATA: ignored\n\n");
        assert_eq!(events, vec![ev("message", "a: b:c", None)]);
    }

    #[test]
    fn leading_bom_is_skipped_once() {
        let events = parse_every_way(b"\xEF\xBB\xBFdata: x\n\n");
        assert_eq!(events, vec![ev("message", "x", None)]);
        // The BOM split over three chunks.
        let (events, _) = parse_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: y\n\n"], BIG);
        assert_eq!(events, vec![ev("message", "y", None)]);
        // A second BOM is part of the first line: the field name is then unknown.
        let (events, _) = parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: z\n\ndata: w\n\n");
        assert_eq!(events, vec![ev("message", "w", None)]);
        // A BOM in a later line is not skipped either.
        let (events, _) = parse(b"data: 1\n\n\xEF\xBB\xBFdata: 2\n\n");
        assert_eq!(events, vec![ev("message", "1", None)]);
        // A stream of only part of a BOM is cut inside an event.
        let (events, parser) = parse_chunks(&[b"\xEF", b"\xBB"], BIG);
        assert!(events.is_empty());
        assert!(parser.has_partial());
        // A BOM-like prefix that diverges keeps its bytes as the first line's start.
        let mut parser = SseParser::new(BIG);
        let mut out = Vec::new();
        parser.feed(b"\xEF", &mut out).expect("feed");
        assert_eq!(
            parser.feed(b"data: x\n\n", &mut out),
            Ok(()),
            "unknown field name, not an error"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn utf8_character_split_across_chunks() {
        let input = "event: ünï\nid: ∂-1\ndata: héllo 🦀 wörld\n\n".as_bytes();
        let events = parse_every_way(input);
        assert_eq!(events, vec![ev("ünï", "héllo 🦀 wörld", Some("∂-1"))]);
        // Explicitly inside the crab (4 bytes): split after each of its bytes.
        let crab = "data: 🦀\n\n".as_bytes();
        for split in 7..10 {
            let (a, b) = crab.split_at(split);
            let (events, _) = parse_chunks(&[a, b], BIG);
            assert_eq!(events, vec![ev("message", "🦀", None)]);
        }
    }

    #[test]
    fn id_persists_across_events_and_empty_id_resets_it() {
        let events = parse_every_way(
            b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\ndata: e\n\n",
        );
        assert_eq!(
            events,
            vec![
                ev("message", "a", Some("1")),
                ev("message", "b", Some("1")),
                ev("message", "c", Some("2")),
                ev("message", "d", None),
                ev("message", "e", None),
            ]
        );
    }

    #[test]
    fn event_type_does_not_persist() {
        let events = parse_every_way(b"event: a\ndata: 1\n\ndata: 2\n\n");
        assert_eq!(events, vec![ev("a", "1", None), ev("message", "2", None)]);
    }

    #[test]
    fn last_event_id_is_committed_at_the_blank_line() {
        let (events, parser) = parse(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
        assert_eq!(events, vec![ev("message", "a", Some("1"))]);
        assert_eq!(
            parser.last_event_id(),
            Some("1"),
            "event 2 was not delivered"
        );
        assert!(parser.has_partial());
    }

    #[test]
    fn id_with_nul_is_ignored() {
        let events = parse_every_way(b"id: good\ndata: a\n\nid: b\0ad\ndata: b\n\n");
        assert_eq!(
            events,
            vec![
                ev("message", "a", Some("good")),
                ev("message", "b", Some("good"))
            ]
        );
        let (events, parser) = parse(b"id: \0\ndata: c\n\n");
        assert_eq!(events, vec![ev("message", "c", None)]);
        assert_eq!(parser.last_event_id(), None);
    }

    #[test]
    fn retry_parsing() {
        let (events, parser) = parse(
            b"retry: 1500\ndata: a\n\n\
              retry: 12x\ndata: b\n\n\
              retry:\ndata: c\n\n\
              retry: -5\nretry: +5\nretry:  5\nretry: 99999999999999999999999\ndata: d\n\n\
              retry:250\ndata: e\n\n",
        );
        let retries: Vec<Option<u64>> = events.iter().map(|e| e.retry).collect();
        assert_eq!(retries, vec![Some(1500), None, None, None, Some(250)]);
        assert_eq!(parser.retry(), Some(250));
        // A retry-only block sets the stream's retry and dispatches nothing.
        let (events, parser) = parse(b"retry: 10\n\n");
        assert!(events.is_empty());
        assert_eq!(parser.retry(), Some(10));
    }

    #[test]
    fn partial_event_at_end_is_not_dispatched_and_is_detectable() {
        let (events, parser) = parse(b"data: done\n\ndata: cut");
        assert_eq!(events, vec![ev("message", "done", None)]);
        assert!(parser.has_partial(), "cut inside a line");

        let (events, parser) = parse(b"data: done\n\nevent: x\ndata: cut\n");
        assert_eq!(events.len(), 1);
        assert!(parser.has_partial(), "complete lines but no blank line");

        let (_, parser) = parse(b"data: done\n\nid: 3\n");
        assert!(
            parser.has_partial(),
            "an id-only block without its blank line"
        );

        let (_, parser) = parse(b"data: done\r");
        assert!(parser.has_partial(), "the CR ended the line, not the event");

        let (_, parser) = parse(b"data: done\n\r");
        assert!(!parser.has_partial(), "a lone CR is a blank line");

        let (_, parser) = parse(b"");
        assert!(!parser.has_partial());
        let (_, parser) = parse(b"data: a\n\n: keepalive\n");
        assert!(!parser.has_partial());
    }

    #[test]
    fn size_limit_is_enforced_and_streams_under_it_work() {
        let max = 100;
        let exact = format!("data: {}\n\n", "x".repeat(max));
        let (events, _) = parse_chunks(&[exact.as_bytes()], max);
        assert_eq!(
            events[0].data.len(),
            max,
            "data of exactly the limit is fine"
        );

        // Many events, each under the limit, and a multi-line event exactly at it.
        let mut stream = String::new();
        for i in 0..50 {
            stream.push_str(&format!(
                "id: {i}\nevent: message\ndata: {}\n\n",
                "y".repeat(90)
            ));
        }
        stream.push_str(&format!(
            "data: {}\ndata: {}\n\n",
            "a".repeat(49),
            "b".repeat(50)
        ));
        let bytes = stream.as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(7).collect();
        let (events, parser) = parse_chunks(&chunks, max);
        assert_eq!(events.len(), 51);
        assert_eq!(events[50].data.len(), max);
        assert_eq!(parser.last_event_id(), Some("49"));

        // One byte over, in one line.
        let over = format!("data: {}\n\n", "x".repeat(max + 1));
        let mut parser = SseParser::new(max);
        let mut out = Vec::new();
        assert_eq!(
            parser.feed(over.as_bytes(), &mut out),
            Err(SseError::EventTooLarge { limit: max })
        );
        assert!(out.is_empty());
        // The parser stays failed.
        assert_eq!(
            parser.feed(b"data: ok\n\n", &mut out),
            Err(SseError::EventTooLarge { limit: max })
        );

        // Over the limit across data lines.
        let mut parser = SseParser::new(max);
        let lines = format!("data: {}\ndata: {}\n", "a".repeat(50), "b".repeat(50));
        assert_eq!(
            parser.feed(lines.as_bytes(), &mut out),
            Err(SseError::EventTooLarge { limit: max })
        );
    }

    #[test]
    fn size_limit_bounds_memory_of_an_endless_line() {
        let max = 1000;
        let mut parser = SseParser::new(max);
        let mut out = Vec::new();
        let chunk = [b'z'; 64];
        let mut fed = 0usize;
        let err = loop {
            match parser.feed(&chunk, &mut out) {
                Ok(()) => fed += chunk.len(),
                Err(err) => break err,
            }
            assert!(fed <= max + LINE_SLACK, "grew past the bound");
            assert!(parser.line.capacity() <= 2 * (max + LINE_SLACK) + chunk.len());
        };
        assert_eq!(err, SseError::EventTooLarge { limit: max });
        assert!(
            parser.line.capacity() == 0,
            "buffers are dropped after a failure"
        );
        // Also for lines without an end that are not data, and for the event type.
        let mut parser = SseParser::new(max);
        let long_event = format!("event: {}\n", "e".repeat(max + LINE_SLACK));
        assert_eq!(
            parser.feed(long_event.as_bytes(), &mut out),
            Err(SseError::EventTooLarge { limit: max })
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        for input in [
            &b"data: \xFF\xFE\n\n"[..],
            &b"data: ok\ndata: \xC3\n\n"[..],
            &b"id: \xFF\n"[..],
            &b"event: \xFF\ndata: x\n\n"[..],
        ] {
            let mut parser = SseParser::new(BIG);
            let mut out = Vec::new();
            assert_eq!(
                parser.feed(input, &mut out),
                Err(SseError::InvalidUtf8),
                "{input:?}"
            );
            assert!(out.is_empty());
        }
        // Events before the bad one are delivered.
        let mut parser = SseParser::new(BIG);
        let mut out = Vec::new();
        assert_eq!(
            parser.feed(b"data: fine\n\ndata: \x80\n\n", &mut out),
            Err(SseError::InvalidUtf8)
        );
        assert_eq!(out, vec![ev("message", "fine", None)]);
        // Invalid bytes in comments and unknown field names are simply ignored.
        let (events, _) = parse(b": \xFF\n\xFF: x\ndata: ok\n\n");
        assert_eq!(events, vec![ev("message", "ok", None)]);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            SseError::EventTooLarge { limit: 5 }.to_string(),
            "an event in the stream exceeds the limit of 5 bytes"
        );
        assert_eq!(
            SseError::InvalidUtf8.to_string(),
            "an event in the stream is not valid UTF-8"
        );
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        /// One event to serialize: its type, data lines, id action, retry, and
        /// whether comments / extra blank lines surround it.
        #[derive(Debug, Clone)]
        struct Spec {
            event: Option<String>,
            data_lines: Vec<String>,
            /// `None`: no `id:` line; `Some("")`: an empty `id:` (resets).
            id: Option<String>,
            retry: Option<u64>,
            comment_before: bool,
            blank_before: bool,
        }

        fn spec() -> impl Strategy<Value = Spec> {
            (
                proptest::option::of("[^\r\n]{0,8}"),
                proptest::collection::vec("[^\r\n]{0,12}", 1..4),
                proptest::option::of("[^\r\n\u{0}]{0,6}"),
                proptest::option::of(any::<u64>()),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(
                    |(event, data_lines, id, retry, comment_before, blank_before)| Spec {
                        event,
                        data_lines,
                        id,
                        retry,
                        comment_before,
                        blank_before,
                    },
                )
        }

        /// Serializes the specs with the given line ends (indices into LF, CRLF, CR,
        /// cycled); returns the bytes and the events a parser must produce.
        fn serialize(specs: &[Spec], bom: bool, ends: &[u8]) -> (Vec<u8>, Vec<SseEvent>, usize) {
            let mut lines: Vec<String> = Vec::new();
            let mut expected = Vec::new();
            let mut last_id: Option<String> = None;
            let mut comments = 0;
            for spec in specs {
                if spec.comment_before {
                    lines.push(": keepalive".to_owned());
                    comments += 1;
                }
                if spec.blank_before {
                    lines.push(String::new());
                }
                if let Some(event) = &spec.event {
                    lines.push(format!("event: {event}"));
                }
                if let Some(id) = &spec.id {
                    lines.push(format!("id: {id}"));
                    last_id = (!id.is_empty()).then(|| id.clone());
                }
                if let Some(retry) = spec.retry {
                    lines.push(format!("retry: {retry}"));
                }
                for data in &spec.data_lines {
                    lines.push(format!("data: {data}"));
                }
                lines.push(String::new());
                expected.push(SseEvent {
                    event: match spec.event.as_deref() {
                        None | Some("") => "message".into(),
                        Some(event) => event.to_owned().into(),
                    },
                    data: spec.data_lines.join("\n"),
                    id: last_id.as_deref().map(Arc::from),
                    retry: spec.retry,
                });
            }
            let mut bytes = Vec::new();
            if bom {
                bytes.extend_from_slice(BOM);
            }
            let mut previous_cr = false;
            for (i, line) in lines.iter().enumerate() {
                bytes.extend_from_slice(line.as_bytes());
                let mut end: &[u8] = match ends[i % ends.len()] % 3 {
                    0 => b"\n",
                    1 => b"\r\n",
                    _ => b"\r",
                };
                // A CR then an empty line ended by LF would read as one CRLF.
                if previous_cr && line.is_empty() && end == b"\n" {
                    end = b"\r";
                }
                previous_cr = end == b"\r";
                bytes.extend_from_slice(end);
            }
            (bytes, expected, comments)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_chunking_yields_the_original_events(
                specs in proptest::collection::vec(spec(), 0..6),
                bom in any::<bool>(),
                ends in proptest::collection::vec(0u8..3, 1..8),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let (bytes, expected, comments) = serialize(&specs, bom, &ends);
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut parser = SseParser::new(1 << 20);
                let mut out = Vec::new();
                let mut start = 0;
                for cut in cuts.into_iter().chain([bytes.len()]) {
                    let chunk = bytes.get(start..cut).unwrap_or_default();
                    parser.feed(chunk, &mut out).expect("valid stream");
                    start = cut;
                }
                prop_assert_eq!(&out, &expected);
                prop_assert!(!parser.has_partial());
                prop_assert_eq!(parser.comments_seen(), comments as u64);
                let last = expected.last().and_then(|e| e.id.as_deref());
                prop_assert_eq!(parser.last_event_id(), last);

                // And byte by byte.
                let mut parser = SseParser::new(1 << 20);
                let mut by_byte = Vec::new();
                for byte in bytes.chunks(1) {
                    parser.feed(byte, &mut by_byte).expect("valid stream");
                }
                prop_assert_eq!(&by_byte, &expected);
            }

            #[test]
            fn arbitrary_bytes_never_panic(
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
                max in 0usize..64,
            ) {
                let mut parser = SseParser::new(max);
                let mut out = Vec::new();
                for chunk in &chunks {
                    if parser.feed(chunk, &mut out).is_err() {
                        break;
                    }
                }
                for event in &out {
                    prop_assert!(event.data.len() <= max);
                }
            }
        }
    }
}
