//! A look at an answer as it flows, byte by byte and without a copy: whether the
//! JSON-RPC message it carries (a JSON body, or each event's `data` of an event stream)
//! is a response, and whether that response is an error. Only the keys of the message's
//! top level are read, as [`crate::jsonrpc::Head`] does; nothing is parsed or gathered.
//!
//! An answer to a POST carries the answer to that one request (other messages on its
//! stream are notifications and requests of the server, which have no `result` or
//! `error`), so the first response seen is the request's.

/// What the top-level keys of one JSON object said so far.
#[derive(Debug, Default, Clone)]
struct Keys {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A string at the top level where a key is expected.
    expecting_key: bool,
    capturing: bool,
    key: [u8; 6],
    key_len: usize,
    /// The last top-level key read, if one of ours.
    last: Option<Key>,
    result: bool,
    error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Result,
    Error,
}

impl Keys {
    fn feed(&mut self, byte: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
                self.capture(byte);
            } else if byte == b'\\' {
                self.escaped = true;
                self.capture(byte);
            } else if byte == b'"' {
                self.in_string = false;
                if self.capturing {
                    self.capturing = false;
                    self.last = match &self.key[..self.key_len.min(6)] {
                        _ if self.key_len > 6 => None,
                        b"result" => Some(Key::Result),
                        b"error" => Some(Key::Error),
                        _ => None,
                    };
                }
            } else {
                self.capture(byte);
            }
            return;
        }
        match byte {
            b'"' => {
                self.in_string = true;
                self.capturing = self.depth == 1 && self.expecting_key;
                self.key_len = 0;
                self.last = None;
            }
            b'{' | b'[' => {
                self.depth += 1;
                self.expecting_key = self.depth == 1 && byte == b'{';
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b',' if self.depth == 1 => self.expecting_key = true,
            b':' if self.depth == 1 => {
                match self.last.take() {
                    Some(Key::Result) => self.result = true,
                    Some(Key::Error) => self.error = true,
                    None => {}
                }
                self.expecting_key = false;
            }
            _ => {}
        }
    }

    fn capture(&mut self, byte: u8) {
        if self.capturing {
            if let Some(slot) = self.key.get_mut(self.key_len) {
                *slot = byte;
            }
            self.key_len += 1;
        }
    }
}

/// Where an event stream's scan is in its current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Reading the field name: this many bytes of `data:` matched.
    Field(usize),
    /// In a `data` line's value; `true` before its first byte (a space there is skipped).
    Data(bool),
    /// In a line of another field, or a comment.
    Other,
}

/// The look at one answer.
#[derive(Debug, Clone)]
pub struct Scan {
    /// `Some` for an event stream: where its scan is.
    events: Option<Line>,
    /// An event (or a JSON body) has begun and not ended.
    within: bool,
    keys: Keys,
    /// A response was seen (a whole event, or anywhere in a JSON body).
    answered: bool,
    /// The response seen was an error.
    error: bool,
}

impl Scan {
    /// A look at a JSON body (`events` false) or an event stream.
    pub fn new(events: bool) -> Self {
        Self {
            events: events.then_some(Line::Field(0)),
            within: false,
            keys: Keys::default(),
            answered: false,
            error: false,
        }
    }

    /// True for an event stream.
    pub fn is_events(&self) -> bool {
        self.events.is_some()
    }

    /// Looks at the next bytes of the answer.
    pub fn chunk(&mut self, bytes: &[u8]) {
        let Some(line) = &mut self.events else {
            self.within |= !bytes.is_empty();
            for &byte in bytes {
                self.keys.feed(byte);
            }
            return;
        };
        for &byte in bytes {
            match (byte, *line) {
                (b'\r', _) => {}
                (b'\n', Line::Field(0)) => {
                    // A blank line: the event ends.
                    if self.within && !self.answered {
                        self.answered = self.keys.result || self.keys.error;
                        self.error = self.keys.error;
                    }
                    self.keys = Keys::default();
                    self.within = false;
                }
                (b'\n', current) => {
                    if matches!(current, Line::Data(_)) {
                        self.keys.feed(b'\n');
                    }
                    *line = Line::Field(0);
                }
                (_, Line::Field(matched)) => {
                    self.within = true;
                    *line = match b"data:".get(matched) {
                        Some(&want) if want == byte && matched == 4 => Line::Data(true),
                        Some(&want) if want == byte => Line::Field(matched + 1),
                        _ => Line::Other,
                    };
                }
                (b' ', Line::Data(true)) => *line = Line::Data(false),
                (_, Line::Data(_)) => {
                    *line = Line::Data(false);
                    self.keys.feed(byte);
                }
                (_, Line::Other) => {}
            }
        }
    }

    /// The answer ended: for a JSON body, its message is whole now.
    pub fn end(&mut self) {
        if self.events.is_none() && !self.answered {
            self.answered = self.keys.result || self.keys.error;
            self.error = self.keys.error;
        }
    }

    /// True once the answer carried a response.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// True when the response it carried is a JSON-RPC error.
    pub fn is_error(&self) -> bool {
        self.error
    }

    /// True between events (or before any byte of a JSON body): an event added now
    /// would stand on its own.
    pub fn between_events(&self) -> bool {
        !self.within && self.events == Some(Line::Field(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(events: bool, chunks: &[&str]) -> Scan {
        let mut scan = Scan::new(events);
        for chunk in chunks {
            scan.chunk(chunk.as_bytes());
        }
        scan.end();
        scan
    }

    #[test]
    fn a_json_body_is_an_error_only_by_its_top_level_key() {
        let error = scan(
            false,
            &[r#"{"jsonrpc":"2.0","id":1,"err"#, r#"or":{"code":-1}}"#],
        );
        assert!(error.answered() && error.is_error());
        let result = scan(
            false,
            &[r#"{"result":{"error":{"x":"\"error\""}},"id":1,"jsonrpc":"2.0"}"#],
        );
        assert!(result.answered() && !result.is_error());
        let nested = scan(false, &[r#"{"id":1,"result":[{"error":1}],"x":"error"}"#]);
        assert!(!nested.is_error());
        let long_key = scan(false, &[r#"{"errors":1,"id":1}"#]);
        assert!(!long_key.answered());
    }

    #[test]
    fn an_event_stream_is_read_event_by_event() {
        let progress = "event: message\ndata: {\"method\":\"notifications/progress\",\"params\":{\"error\":1}}\n\n";
        let answer = "id: 7\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\r\ndata: \"error\":{\"code\":-32602}}\r\n\r\n";
        let mut s = Scan::new(true);
        assert!(s.between_events());
        s.chunk(progress.as_bytes());
        assert!(s.between_events() && !s.answered());
        s.chunk(&answer.as_bytes()[..20]);
        assert!(!s.between_events());
        s.chunk(&answer.as_bytes()[20..]);
        assert!(s.between_events() && s.answered() && s.is_error());
        let ok = scan(true, &["data:{\"result\":{},\"id\":1}\n\n"]);
        assert!(ok.answered() && !ok.is_error());
        let comment = scan(true, &[": keep-alive\n\n", "retry: 10\n\n"]);
        assert!(!comment.answered());
    }
}
