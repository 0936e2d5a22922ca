//! The little of HTTP/1.1 the fleet server needs: one request per connection (the answer says
//! `Connection: close`), its head parsed by `httparse` within a size limit, its body by
//! `Content-Length` or chunked within another, and the answer written whole. Anything outside
//! that (a request smuggled behind both framings, a head or body too large) is refused, never
//! guessed at.

use std::io::{self, Read, Write};

/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 16 << 10;
/// The most headers a request may carry.
const MAX_HEADERS: usize = 64;

/// A request's line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without its query.
    pub path: String,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before sending anything (a probe, an idle pool connection): no answer.
    Closed,
    /// The transport failed or timed out mid-request: no answer can be relied on.
    Io(io::Error),
    /// Not HTTP/1.x as this server reads it (400).
    Malformed(String),
    /// The head or the body is over its limit (413).
    TooLarge(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

/// Reads a request head. `buf` gets whatever was read past it (the body's first bytes).
pub fn read_head<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Head, ReadError> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in the request head"))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().split(['?', '#']).next().unwrap_or_default().to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).trim().to_string()))
                        .collect(),
                };
                buf.drain(..len);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(ReadError::TooLarge(format!("a request head over {MAX_HEAD} bytes")));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::TooLarge(format!("more than {MAX_HEADERS} headers")));
            }
            Err(e) => return Err(ReadError::Malformed(format!("not an HTTP/1.1 request: {e}"))),
        }
    }
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// How the body is framed, refusing the ambiguous (both framings, lengths that disagree,
/// codings other than chunked): each could make this server and a proxy in front of it
/// disagree about where a request ends.
pub fn framing(head: &Head) -> Result<Framing, ReadError> {
    let te: Vec<&str> = head.all("transfer-encoding").collect();
    let cl: Vec<&str> = head.all("content-length").collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(ReadError::Malformed("both Transfer-Encoding and Content-Length".into()));
        }
        let codings: Vec<String> =
            te.iter().flat_map(|v| v.split(',')).map(|c| c.trim().to_ascii_lowercase()).collect();
        return if codings == ["chunked"] {
            Ok(Framing::Chunked)
        } else {
            Err(ReadError::Malformed(format!("Transfer-Encoding {:?} (only chunked is taken)", te.join(", "))))
        };
    }
    let mut length = None;
    for v in cl.iter().flat_map(|v| v.split(',')) {
        let v = v.trim();
        let n: u64 = v
            .parse()
            .ok()
            .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| ReadError::Malformed(format!("Content-Length {v:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(ReadError::Malformed("Content-Length values that disagree".into()));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::None, Framing::Length))
}

/// Reads the body of at most `max` bytes; `buf` holds what [`read_head`] read past the head.
pub fn read_body<R: Read>(r: &mut R, framing: Framing, buf: Vec<u8>, max: usize) -> Result<Vec<u8>, ReadError> {
    match framing {
        Framing::None => Ok(Vec::new()),
        Framing::Length(n) => {
            if n > max as u64 {
                return Err(ReadError::TooLarge(format!("a body of {n} bytes (at most {max})")));
            }
            let n = n as usize;
            let mut body = buf;
            if body.len() > n {
                // Pipelined bytes after the body: one request per connection, so they go.
                body.truncate(n);
            }
            let have = body.len();
            body.resize(n, 0);
            r.read_exact(&mut body[have..]).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    ReadError::Io(io::Error::new(e.kind(), format!("closed after {have} of {n} body bytes")))
                }
                _ => ReadError::Io(e),
            })?;
            Ok(body)
        }
        Framing::Chunked => Chunks { r, buf, pos: 0 }.read_all(max),
    }
}

/// A chunked body's reader over the bytes already read and the stream.
struct Chunks<'a, R> {
    r: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> Chunks<'_, R> {
    fn byte(&mut self) -> Result<u8, ReadError> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            let mut chunk = [0u8; 4096];
            let n = self.r.read(&mut chunk)?;
            if n == 0 {
                return Err(ReadError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in a chunked body")));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }

    /// A line without its CRLF, of at most 1 KiB; a bare LF is refused.
    fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut line = Vec::new();
        loop {
            match self.byte()? {
                b'\n' => {
                    if line.pop() != Some(b'\r') {
                        return Err(ReadError::Malformed("a chunk line ending in a bare LF".into()));
                    }
                    return Ok(line);
                }
                b => line.push(b),
            }
            if line.len() > 1024 {
                return Err(ReadError::Malformed("a chunk line over 1 KiB".into()));
            }
        }
    }

    fn read_all(mut self, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.line()?;
            // Hex digits only (no sign, no spaces but before a `;` extension): a proxy in front
            // must not read another size than this server.
            let mut size = line.split(|&b| b == b';').next().unwrap_or_default();
            if size.len() < line.len() {
                while let [rest @ .., b' ' | b'\t'] = size {
                    size = rest;
                }
            }
            let size = Some(size)
                .filter(|s| !s.is_empty() && s.len() <= 16 && s.iter().all(u8::is_ascii_hexdigit))
                .and_then(|s| usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok())
                .ok_or_else(|| ReadError::Malformed(format!("chunk size {:?}", String::from_utf8_lossy(&line))))?;
            if size == 0 {
                // Trailers, up to the empty line; ignored.
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            if body.len().saturating_add(size) > max {
                return Err(ReadError::TooLarge(format!("a chunked body over {max} bytes")));
            }
            for _ in 0..size {
                let b = self.byte()?;
                body.push(b);
            }
            if !self.line()?.is_empty() {
                return Err(ReadError::Malformed("a chunk longer than its size".into()));
            }
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers besides `Content-Length`, `Connection` and `Content-Type`.
    pub headers: Vec<(&'static str, String)>,
    /// `Content-Type`, when there is a body.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty answer with `status`.
    pub fn empty(status: u16) -> Response {
        Response { status, headers: Vec::new(), content_type: "", body: Vec::new() }
    }

    /// A JSON answer.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response { status, headers: Vec::new(), content_type: "application/json", body }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; `head_only` for an answer to `HEAD`.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.content_type.is_empty() {
            out.push_str(&format!("content-type: {}\r\n", self.content_type));
        }
        out.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    /// Writes it whole.
    pub fn write_to<W: Write>(&self, w: &mut W, head_only: bool) -> io::Result<()> {
        w.write_all(&self.to_bytes(head_only))?;
        w.flush()
    }
}

/// The reason phrase of the statuses this server answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], max: usize) -> Result<(Head, Vec<u8>), ReadError> {
        let mut r = raw;
        let mut buf = Vec::new();
        let head = read_head(&mut r, &mut buf)?;
        let f = framing(&head)?;
        let body = read_body(&mut r, f, buf, max)?;
        Ok((head, body))
    }

    #[test]
    fn a_request_with_a_length_or_chunks_is_read() {
        let (head, body) = parse(
            b"POST /v1/pre-reboot?x=1 HTTP/1.1\r\nHost: a\r\nFleet-Lock-Protocol:  true \r\nContent-Length: 5\r\n\r\nhello",
            64,
        )
        .unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/v1/pre-reboot"));
        assert_eq!(head.header("fleet-lock-protocol"), Some("true"));
        assert_eq!(body, b"hello");
        let (_, body) = parse(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\n",
            64,
        )
        .unwrap();
        assert_eq!(body, b"hello");
        let (_, body) = parse(b"GET /berth/v1/health HTTP/1.1\r\n\r\n", 64).unwrap();
        assert!(body.is_empty());
    }

    #[test]
    fn limits_and_ambiguities_are_refused() {
        let too_long = parse(b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n", 64);
        assert!(matches!(too_long, Err(ReadError::TooLarge(_))), "{too_long:?}");
        let chunks = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n", 64);
        assert!(matches!(chunks, Err(ReadError::TooLarge(_))), "{chunks:?}");
        let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b"X-A: b\r\n".as_slice(), 3000).flatten());
        assert!(matches!(parse(&huge, 64), Err(ReadError::TooLarge(_))));
        for bad in [
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            let r = parse(bad, 64);
            assert!(matches!(r, Err(ReadError::Malformed(_))), "{:?}: {r:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(parse(b"", 64), Err(ReadError::Closed)));
        assert!(matches!(parse(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc", 64), Err(ReadError::Io(_))));
        assert!(matches!(parse(b"POST / HTT", 64), Err(ReadError::Io(_))));
    }

    /// Chunk sizes as RFC 9112 writes them and nothing looser: a front proxy that parses them
    /// strictly cannot frame the body otherwise than this server.
    #[test]
    fn chunk_sizes_are_hex_digits_only_and_lines_end_in_crlf() {
        let chunked = |chunks: &[u8]| {
            let mut raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend_from_slice(chunks);
            parse(&raw, 64).map(|(_, body)| body)
        };
        assert_eq!(chunked(b"5 ;ext=1\r\nhello\r\n0\r\n\r\n").unwrap(), b"hello");
        assert_eq!(chunked(b"0005\r\nhello\r\n0\r\n\r\n").unwrap(), b"hello");
        for bad in [
            b"+5\r\nhello\r\n0\r\n\r\n".as_slice(),
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
        ] {
            let r = chunked(bad);
            assert!(matches!(r, Err(ReadError::Malformed(_))), "{:?}: {r:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap fuzz: random bytes, and valid requests cut and flipped at random places.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seed = b"POST /v1/steady-state HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
        for _ in 0..20_000 {
            let mut input = seed.to_vec();
            for _ in 0..(next() % 4) {
                let i = next() as usize % input.len();
                input[i] = next() as u8;
            }
            input.truncate(next() as usize % (input.len() + 1));
            let _ = parse(&input, 64);
        }
    }

    #[test]
    fn answers_close_the_connection_and_count_their_bytes() {
        let r = Response::json(409, b"{}".to_vec()).with("berth-fleet-revision", "7");
        let text = String::from_utf8(r.to_bytes(false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 409 Conflict\r\nberth-fleet-revision: 7\r\ncontent-type: application/json\r\n\
             content-length: 2\r\nconnection: close\r\n\r\n{}"
        );
        assert!(String::from_utf8(r.to_bytes(true)).unwrap().ends_with("\r\n\r\n"));
    }
}
