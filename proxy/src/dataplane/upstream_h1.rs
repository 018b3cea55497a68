//! The lean loop's HTTP/1.1 client: one request to an upstream and its
//! response, on a connection of the lean loop's pool.
//!
//! pingora's client session (`v1::client::HttpSession`) did this before, at
//! ~17k instructions per request of the ~51k bgproxy spent (callgrind,
//! benches/README step 12): a response head parsed and then cloned for the
//! caller, a boxed timeout per read, a 64 KiB body buffer per request, the
//! request's framing worked out for a request that has no body. This one
//! writes the request head in one write, reads the response head and body
//! into one buffer (a small response arrives in one read: one `recv`), and
//! hands the body on as slices of it.
//!
//! The response is framed as RFC 9112 section 6.3 says, as pingora does:
//! no body for a HEAD request, 1xx, 204 and 304; chunked when
//! `Transfer-Encoding` ends in `chunked` (a `Content-Length` beside it is
//! removed); else `Content-Length` (duplicates must agree, else the response
//! is refused); else the body ends when the upstream closes. The connection
//! is reused only when the body was read to its end, nothing followed it,
//! and neither side asked to close.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::fast_timeout::fast_timeout;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result, RetryType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most headers a response head may have (pingora's limit).
const MAX_HEADERS: usize = 256;
/// The largest response head read (pingora's limit, 1 MiB).
const MAX_HEAD: usize = 1024 * 1024 - 1;
/// The most a chunk-size line or the trailer section may take.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;
/// What a read asks for at least.
const READ_SIZE: usize = 16 * 1024;

/// One exchange with an upstream over HTTP/1.1.
pub struct Upstream {
    stream: Stream,
    buf: BytesMut,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    body: Body,
    /// Whether the connection may carry another request once the body is
    /// read to its end.
    keep_alive: bool,
    /// Whether a byte of the response has arrived: a connection closed
    /// before any did may be retried when it was a pooled one.
    received: bool,
}

/// What is left of the response body.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// The head is not read yet.
    Head,
    /// `n` more bytes.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
    /// Read to its end.
    Done,
}

/// Where a chunked body's reading is.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data: `n` more bytes, then its CRLF.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section, `n` bytes of it read so far.
    Trailers(usize),
}

/// A response head read from the upstream.
pub struct Head {
    pub header: Box<ResponseHeader>,
    /// Whether the response ends with its head (no body).
    pub end: bool,
}

impl Upstream {
    /// An exchange on `stream`, each read within `read_timeout` and each
    /// write within `write_timeout` (`None`: without limit).
    pub fn new(
        stream: Stream,
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
    ) -> Self {
        Upstream {
            stream,
            buf: BytesMut::new(),
            read_timeout,
            write_timeout,
            body: Body::Head,
            keep_alive: true,
            received: false,
        }
    }

    /// Writes the request head (the lean loop's requests have no body).
    pub async fn send_request(&mut self, req: &RequestHeader) -> Result<()> {
        if req
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| has_token(v.as_bytes(), b"close"))
        {
            self.keep_alive = false;
        }
        let wire = http_req_header_to_wire(req).ok_or_else(|| {
            Error::explain(
                ErrorType::InvalidHTTPHeader,
                "request target with a forbidden byte, or an HTTP version HTTP/1 cannot write",
            )
        })?;
        self.send_head(&wire).await
    }

    /// Writes a request head already on the wire (one without `Connection`:
    /// the connection stays open).
    pub async fn send_head(&mut self, wire: &[u8]) -> Result<()> {
        let write = async {
            self.stream.write_all(wire).await?;
            self.stream.flush().await
        };
        let written = match self.write_timeout {
            Some(t) => fast_timeout(t, write)
                .await
                .map_err(|_| Error::explain(ErrorType::WriteTimedout, "writing the request"))?,
            None => write.await,
        };
        written.map_err(|e| {
            let mut e = Error::because(ErrorType::WriteError, "writing the request", e);
            // Nothing of a response came: the request may go again on a
            // new connection when this one was pooled.
            e.retry = RetryType::ReusedOnly;
            e
        })
    }

    /// Reads the next response head: a 1xx one (then call again), or the
    /// final one. `head_request`: the request was HEAD (no body follows,
    /// whatever the head says).
    pub async fn read_head(&mut self, head_request: bool) -> Result<Head> {
        loop {
            if let Some((len, header)) = parse_head(&self.buf)? {
                let head = self.buf.split_to(len).freeze();
                let mut header = header.build(&head)?;
                let status = header.status.as_u16();
                if (100..200).contains(&status) {
                    if status == 101 {
                        // Never reused after a switch of protocols.
                        self.keep_alive = false;
                        self.body = Body::Done;
                    }
                    return Ok(Head { header, end: false });
                }
                self.frame(&mut header, head_request)?;
                let end = self.body == Body::Done;
                return Ok(Head { header, end });
            }
            if self.buf.len() > MAX_HEAD {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("response head over {MAX_HEAD} bytes"),
                );
            }
            if self.read_more("the response head").await? == 0 {
                let mut e = Error::explain(
                    ErrorType::ConnectionClosed,
                    format!(
                        "the upstream closed the connection after {} bytes of a response head",
                        self.buf.len()
                    ),
                );
                if !self.received {
                    e.retry = RetryType::ReusedOnly;
                }
                return Err(e);
            }
        }
    }

    /// The next piece of the body, and whether it is the last; `None` with
    /// `true` when the body has ended without more bytes.
    pub async fn read_body(&mut self) -> Result<(Option<Bytes>, bool)> {
        loop {
            match self.body {
                Body::Head => {
                    return Error::e_explain(ErrorType::InternalError, "body before its head")
                }
                Body::Done => return Ok((None, true)),
                Body::Length(left) => {
                    if !self.buf.is_empty() {
                        let n = (self.buf.len() as u64).min(left) as usize;
                        let piece = self.buf.split_to(n).freeze();
                        let left = left - n as u64;
                        self.body = if left == 0 {
                            Body::Done
                        } else {
                            Body::Length(left)
                        };
                        return Ok((Some(piece), left == 0));
                    }
                    if self.read_more("the response body").await? == 0 {
                        return Error::e_explain(
                            ErrorType::ConnectionClosed,
                            format!("the upstream closed the connection {left} bytes before the end of the body"),
                        );
                    }
                }
                Body::Close => {
                    if !self.buf.is_empty() {
                        return Ok((Some(self.buf.split().freeze()), false));
                    }
                    if self.read_more("the response body").await? == 0 {
                        self.body = Body::Done;
                        return Ok((None, true));
                    }
                }
                Body::Chunked(_) => {
                    if let Some(piece) = self.chunked()? {
                        let end = self.body == Body::Done;
                        return Ok((piece, end));
                    }
                    if self.read_more("a chunked response body").await? == 0 {
                        return Error::e_explain(
                            ErrorType::ConnectionClosed,
                            "the upstream closed the connection inside a chunked body",
                        );
                    }
                }
            }
        }
    }

    /// Whether bytes of the body are already read (the next
    /// [`read_body`](Self::read_body) returns without waiting).
    pub fn body_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The connection, when it may carry another request: the body was read
    /// to its end, nothing followed it, and neither side asked to close.
    pub fn into_reusable(self) -> Option<Stream> {
        (self.keep_alive && self.body == Body::Done && self.buf.is_empty()).then_some(self.stream)
    }

    /// Reads what arrives next into the buffer; 0 when the upstream closed.
    async fn read_more(&mut self, what: &str) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let n = match self.read_timeout {
            Some(t) => fast_timeout(t, read)
                .await
                .map_err(|_| Error::explain(ErrorType::ReadTimedout, format!("reading {what}")))?,
            None => read.await,
        };
        let n = n.map_err(|e| {
            let os_error = e.raw_os_error().is_some();
            let mut err = Error::because(ErrorType::ReadError, format!("reading {what}"), e);
            // A reset pooled connection, before any of the response (not a
            // TLS error: not safe to send again).
            if os_error && !self.received {
                err.retry = RetryType::ReusedOnly;
            }
            err
        })?;
        self.received |= n > 0;
        Ok(n)
    }

    /// Decides the body's framing from the final head (RFC 9112 6.3).
    fn frame(&mut self, header: &mut ResponseHeader, head_request: bool) -> Result<()> {
        // One pass over the headers (a look-up per name cost more).
        let (mut close, mut keep_alive_asked) = (false, false);
        // Some(whether the last coding is chunked) when Transfer-Encoding
        // was sent; the Content-Length values, checked only without it.
        let mut chunked = None;
        let mut length: Result<Option<u64>> = Ok(None);
        for (name, value) in header.headers.iter() {
            let value = value.as_bytes();
            if name == http::header::CONNECTION {
                close |= has_token(value, b"close");
                keep_alive_asked |= has_token(value, b"keep-alive");
            } else if name == http::header::TRANSFER_ENCODING {
                chunked = Some(ends_chunked(value));
            } else if name == http::header::CONTENT_LENGTH {
                if let Ok(known) = &mut length {
                    if let Err(e) = add_length(known, value) {
                        length = Err(e);
                    }
                }
            }
        }
        let http10 = header.version == http::Version::HTTP_10;
        if close || (http10 && !keep_alive_asked) {
            self.keep_alive = false;
        }
        let status = header.status.as_u16();
        if chunked.is_some() {
            // Transfer-Encoding overrides Content-Length (RFC 9112 6.3),
            // and an HTTP/1.0 response with it is not reused (6.1).
            header.remove_header(&http::header::CONTENT_LENGTH);
            if http10 {
                self.keep_alive = false;
            }
        }
        self.body = if head_request || status == 204 || status == 304 {
            Body::Done
        } else {
            match chunked {
                Some(true) => Body::Chunked(Chunk::Size),
                Some(false) => Body::Close,
                None => match length? {
                    Some(0) => Body::Done,
                    Some(n) => Body::Length(n),
                    None => Body::Close,
                },
            }
        };
        if self.body == Body::Close {
            self.keep_alive = false;
        }
        Ok(())
    }

    /// Steps a chunked body through what is buffered: `Some` with a piece
    /// of data (or `None` at the end of the body), or `None` when more must
    /// be read first.
    #[allow(clippy::option_option)]
    fn chunked(&mut self) -> Result<Option<Option<Bytes>>> {
        loop {
            let Body::Chunked(chunk) = &mut self.body else {
                return Ok(Some(None));
            };
            match chunk {
                Chunk::Size => {
                    let Some(eol) = find_crlf(&self.buf) else {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            return Error::e_explain(
                                ErrorType::InvalidHTTPHeader,
                                "chunk-size line too long",
                            );
                        }
                        return Ok(None);
                    };
                    let size = chunk_size(&self.buf[..eol])?;
                    self.buf.advance(eol + 2);
                    *chunk = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (self.buf.len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    return Ok(Some(Some(self.buf.split_to(n).freeze())));
                }
                Chunk::DataEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            "no CRLF after a chunk's data",
                        );
                    }
                    self.buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers(seen) => {
                    // Trailer fields are dropped; the empty line ends them.
                    let Some(eol) = find_crlf(&self.buf) else {
                        if *seen + self.buf.len() > MAX_TRAILERS {
                            return Error::e_explain(
                                ErrorType::InvalidHTTPHeader,
                                "trailer section too large",
                            );
                        }
                        return Ok(None);
                    };
                    self.buf.advance(eol + 2);
                    if eol == 0 {
                        self.body = Body::Done;
                        return Ok(Some(None));
                    }
                    *seen += eol + 2;
                    if *seen > MAX_TRAILERS {
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            "trailer section too large",
                        );
                    }
                }
            }
        }
    }
}

/// A parsed response head: offsets into the buffer it was parsed from.
struct Parsed {
    status: u16,
    version: http::Version,
    reason: Option<(usize, usize)>,
    headers: Vec<((usize, usize), (usize, usize))>,
}

impl Parsed {
    /// The pingora header, values as slices of `head`. Names are kept in
    /// the header map only, in lower case, as HAProxy sends them (RFC 9110:
    /// names are case-insensitive): pingora's map of each name's original
    /// case doubled the cost of every header here and again when the front
    /// door adds or replaces one on the way to the client.
    fn build(self, head: &Bytes) -> Result<Box<ResponseHeader>> {
        let invalid = |what: &str| Error::explain(ErrorType::InvalidHTTPHeader, what.to_owned());
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = http::StatusCode::from_u16(self.status)
            .map_err(|_| invalid("invalid status code in a response head"))?;
        parts.version = self.version;
        parts.headers.reserve(self.headers.len());
        for ((na, nb), (va, vb)) in self.headers {
            let name = http::HeaderName::from_bytes(&head[na..nb])
                .map_err(|_| invalid("invalid header name in a response head"))?;
            let value = pingora::http::header_value_from_raw(head.slice(va..vb));
            parts
                .headers
                .try_append(name, value)
                .map_err(|_| invalid("too many headers in a response head"))?;
        }
        let mut header = ResponseHeader::from(parts);
        let reason = self
            .reason
            .map(|(a, b)| std::str::from_utf8(&head[a..b]).unwrap_or(""));
        header.set_reason_phrase(reason)?;
        Ok(Box::new(header))
    }
}

/// Parses a response head at the start of `buf`: its length and parts, or
/// `None` when it is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Parsed)>> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    let len = match config.parse_response(&mut resp, buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Error::e_because(ErrorType::InvalidHTTPHeader, "parsing a response head", e)
        }
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let parsed = Parsed {
        status: resp.code.unwrap_or(0),
        version: match resp.version {
            Some(1) => http::Version::HTTP_11,
            _ => http::Version::HTTP_10,
        },
        reason: resp.reason.map(|r| at(r.as_bytes())),
        headers: resp
            .headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), at(h.value)))
            .collect(),
    };
    Ok(Some((len, parsed)))
}

/// Whether the transfer codings a response names end in `chunked`:
/// `Some` when it has `Transfer-Encoding`, `None` when it has none. The
/// last value's last coding decides (RFC 9112 6.3); any other means the
/// body ends when the connection closes.
pub fn chunked_last(headers: &http::HeaderMap) -> Option<bool> {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .map(|value| ends_chunked(value.as_bytes()))
}

/// Whether one `Transfer-Encoding` value's last coding is `chunked`.
fn ends_chunked(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .rfind(|c| !c.is_empty())
        .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"))
}

/// Adds one `Content-Length` value to what the others said: every value
/// (and every element of a comma-separated one) must be the same number.
fn add_length(length: &mut Option<u64>, value: &[u8]) -> Result<()> {
    for element in value.split(|&b| b == b',') {
        let element = element.trim_ascii();
        let n = std::str::from_utf8(element)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    format!(
                        "invalid Content-Length from the upstream: {:?}",
                        String::from_utf8_lossy(element)
                    ),
                )
            })?;
        if length.is_some_and(|l| l != n) {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "conflicting Content-Length values from the upstream",
            );
        }
        *length = Some(n);
    }
    Ok(())
}

/// A chunk-size line's size (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let invalid = || {
        Error::explain(
            ErrorType::InvalidHTTPHeader,
            format!(
                "invalid chunk size {:?}",
                String::from_utf8_lossy(&line[..line.len().min(32)])
            ),
        )
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid());
    }
    let text = std::str::from_utf8(digits).map_err(|_| invalid())?;
    u64::from_str_radix(text, 16).map_err(|_| invalid())
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Whether a comma-separated header value has `token` (any case).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// An exchange whose upstream sends `parts` (each written on its own,
    /// after a pause, so that they arrive as separate reads), then closes
    /// if `close`. Returns the exchange after the request was sent.
    async fn exchange(parts: Vec<&[u8]>, close: bool) -> Upstream {
        let parts: Vec<Vec<u8>> = parts.into_iter().map(<[u8]>::to_vec).collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            for part in parts {
                s.write_all(&part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !close {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let stream: Stream = Box::new(L4Stream::from(TcpStream::connect(addr).await.unwrap()));
        let mut up = Upstream::new(stream, Some(Duration::from_secs(2)), None);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Host", "a").unwrap();
        up.send_request(&req).await.unwrap();
        up
    }

    /// The whole body, read piece by piece.
    async fn body(up: &mut Upstream) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let (piece, end) = up.read_body().await?;
            all.extend_from_slice(piece.as_deref().unwrap_or_default());
            if end {
                return Ok(all);
            }
        }
    }

    /// The body of a response made of `parts` (see [`exchange`]), and
    /// whether the connection would be kept after it.
    async fn whole(parts: Vec<&[u8]>, close: bool) -> (Vec<u8>, bool) {
        let mut up = exchange(parts, close).await;
        up.read_head(false).await.unwrap();
        let all = body(&mut up).await.unwrap();
        (all, up.into_reusable().is_some())
    }

    #[tokio::test]
    async fn a_content_length_body_split_across_reads_and_the_connection_kept() {
        let mut up = exchange(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Le",
                b"ngth: 11\r\nX-A: b\r\n\r\nhello",
                b" world",
            ],
            false,
        )
        .await;
        let head = up.read_head(false).await.unwrap();
        assert_eq!(head.header.status, 200);
        assert!(!head.end);
        let mut wire = Vec::new();
        head.header.header_to_h1_wire(&mut wire);
        // Well-known names title-cased by pingora, others in lower case.
        assert_eq!(wire, b"Content-Length: 11\r\nx-a: b\r\n");
        assert_eq!(head.header.get_reason_phrase(), Some("OK"));
        assert_eq!(body(&mut up).await.unwrap(), b"hello world");
        assert!(up.into_reusable().is_some());
    }

    #[tokio::test]
    async fn a_chunked_body_with_extensions_and_trailers() {
        let mut up = exchange(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5;x=y\r\nhel",
                b"lo\r\n6\r\n world\r",
                b"\n0\r\nX-Trailer: t\r\n\r\n",
            ],
            false,
        )
        .await;
        let head = up.read_head(false).await.unwrap();
        assert!(
            !head.header.headers.contains_key("content-length"),
            "Transfer-Encoding overrides Content-Length"
        );
        assert_eq!(body(&mut up).await.unwrap(), b"hello world");
        assert!(up.into_reusable().is_some());
    }

    #[tokio::test]
    async fn the_last_transfer_coding_decides_and_a_content_length_beside_it_is_ignored() {
        let chunked_last = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: x\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        assert_eq!(
            whole(vec![chunked_last], false).await,
            (b"ab".to_vec(), true)
        );
        let not_chunked_last = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw";
        assert_eq!(
            whole(vec![not_chunked_last], true).await,
            (b"raw".to_vec(), false),
            "to the close"
        );
    }

    #[tokio::test]
    async fn a_body_to_the_close_is_read_whole_and_the_connection_not_kept() {
        let to_close = vec![&b"HTTP/1.1 200 OK\r\n\r\nab"[..], b"cd"];
        assert_eq!(whole(to_close, true).await, (b"abcd".to_vec(), false));
    }

    #[tokio::test]
    async fn no_body_for_head_204_and_304_and_1xx_come_first() {
        let mut up = exchange(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], false).await;
        assert!(up.read_head(true).await.unwrap().end, "HEAD: no body");
        assert!(up.into_reusable().is_some());

        let mut up = exchange(
            vec![b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"],
            false,
        )
        .await;
        let early = up.read_head(false).await.unwrap();
        assert_eq!((early.header.status.as_u16(), early.end), (103, false));
        let last = up.read_head(false).await.unwrap();
        assert_eq!((last.header.status.as_u16(), last.end), (304, true));
        assert!(up.into_reusable().is_some());
    }

    #[tokio::test]
    async fn connection_close_and_http10_are_not_kept() {
        for (response, kept) in [
            (
                &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"[..],
                false,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", true),
        ] {
            assert_eq!(
                whole(vec![response], false).await,
                (b"x".to_vec(), kept),
                "{response:?}"
            );
        }
    }

    #[tokio::test]
    async fn bytes_after_the_body_mean_the_connection_is_not_kept() {
        let more = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy";
        assert_eq!(whole(vec![more], false).await, (b"x".to_vec(), false));
    }

    #[tokio::test]
    async fn bad_framing_is_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let mut up = exchange(vec![bad], false).await;
            let e = up.read_head(false).await.err().expect("refused");
            assert_eq!(e.etype(), &ErrorType::InvalidHTTPHeader, "{bad:?}");
        }
        let mut up = exchange(
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            false,
        )
        .await;
        up.read_head(false).await.unwrap();
        assert!(body(&mut up).await.is_err(), "a chunk size that is not hex");
        // Identical duplicates are one length.
        let mut up = exchange(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok"],
            false,
        )
        .await;
        up.read_head(false).await.unwrap();
        assert_eq!(body(&mut up).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn an_endless_chunk_size_line_or_trailer_section_is_refused() {
        /// The error reading a chunked body that sends `endless`.
        async fn refused(endless: &[u8]) -> ErrorType {
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            let mut up = exchange(vec![head, endless], false).await;
            up.read_head(false).await.unwrap();
            body(&mut up).await.expect_err("refused").etype().clone()
        }
        let size_line = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert_eq!(refused(&size_line).await, ErrorType::InvalidHTTPHeader);
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 100 {
            trailers.extend_from_slice(
                b"X-T: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n",
            );
        }
        assert_eq!(refused(&trailers).await, ErrorType::InvalidHTTPHeader);
    }

    #[tokio::test]
    async fn a_close_before_any_response_may_be_retried_one_after_it_may_not() {
        let mut up = exchange(vec![], true).await;
        let e = up.read_head(false).await.err().unwrap();
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed);
        assert_eq!(e.retry, RetryType::ReusedOnly);

        let mut up = exchange(vec![b"HTTP/1.1 200 OK\r\n"], true).await;
        let e = up.read_head(false).await.err().unwrap();
        assert_eq!(e.retry, RetryType::Decided(false));

        let mut up = exchange(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"],
            true,
        )
        .await;
        up.read_head(false).await.unwrap();
        let e = body(&mut up).await.err().unwrap();
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed, "a body cut short");
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out() {
        let mut up = exchange(vec![], false).await;
        up.read_timeout = Some(Duration::from_millis(50));
        let e = up.read_head(false).await.err().unwrap();
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
    }

    #[test]
    fn the_last_coding_of_the_last_value_decides_chunked() {
        let headers = |values: &[&'static str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(http::header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            h
        };
        assert_eq!(chunked_last(&headers(&[])), None);
        assert_eq!(chunked_last(&headers(&["chunked"])), Some(true));
        assert_eq!(chunked_last(&headers(&["gzip, Chunked "])), Some(true));
        assert_eq!(chunked_last(&headers(&["gzip", "chunked"])), Some(true));
        assert_eq!(chunked_last(&headers(&["chunked, gzip"])), Some(false));
        assert_eq!(chunked_last(&headers(&["chunked", "gzip"])), Some(false));
        assert_eq!(chunked_last(&headers(&[""])), Some(false));
    }

    #[test]
    fn lengths_and_chunk_sizes() {
        let mut length = None;
        add_length(&mut length, b"7, 7").unwrap();
        add_length(&mut length, b" 7").unwrap();
        assert_eq!(length, Some(7));
        assert!(add_length(&mut length, b"8").is_err());
        assert!(add_length(&mut None, b"").is_err());
        assert!(add_length(&mut None, b"+7").is_err());
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0;name=value").unwrap(), 0);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"+1").is_err());
        assert!(chunk_size(b"1234567890abcdef").is_err(), "over 15 digits");
    }
}
