//! HTTP/1.1 framing for the "hello world" keep-alive workload, just enough for both
//! sides: the server splits a byte stream into bodiless requests (each ends with a
//! blank line; they may arrive pipelined or split across reads), the client parses a
//! response (status line, headers in any order and case, Content-Length body) that may
//! arrive in pieces.

pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";

/// A response head larger than this is a misbehaving server, not an incomplete read.
const MAX_HEAD: usize = 64 * 1024;

/// The index just past the first "\r\n\r\n" at or after `from`.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|i| from + i + 4)
}

/// Counts the complete requests at the front of `buf`; returns (count, bytes they use).
/// `scanned` is how far an earlier call already looked, so a request split over many
/// reads is not rescanned from the start each time.
pub fn split_requests(buf: &[u8], scanned: usize) -> (usize, usize) {
    let (mut count, mut used) = (0, 0);
    let mut from = scanned.saturating_sub(3);
    while let Some(end) = find_head_end(buf, from) {
        count += 1;
        used = end;
        from = end;
    }
    (count, used)
}

#[derive(Debug, PartialEq)]
pub enum Parsed {
    Incomplete,
    /// A whole response: its status and its length in bytes (head + body).
    Complete {
        status: u16,
        len: usize,
    },
}

/// Parses the response at the front of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Parsed, String> {
    let Some(head_len) = find_head_end(buf, 0) else {
        return if buf.len() > MAX_HEAD { Err("response head too long".into()) } else { Ok(Parsed::Incomplete) };
    };
    let head = std::str::from_utf8(&buf[..head_len - 4]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut content_length: Option<usize> = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line {line:?}"))?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n = value.trim().parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers".into());
            }
            content_length = Some(n);
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unsupported Transfer-Encoding {:?}", value.trim()));
        }
    }
    // Without a length a keep-alive response has no end: the server misbehaves.
    let body = content_length.ok_or("response without Content-Length")?;
    let len = head_len + body;
    Ok(if buf.len() >= len { Parsed::Complete { status, len } } else { Parsed::Incomplete })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_response_parses_only_when_whole() {
        let full = Parsed::Complete { status: 200, len: RESPONSE.len() };
        assert_eq!(parse_response(RESPONSE), Ok(full));
        for cut in 0..RESPONSE.len() {
            assert_eq!(parse_response(&RESPONSE[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        // A following response does not belong to this one.
        let two = [RESPONSE, RESPONSE].concat();
        assert_eq!(parse_response(&two), Ok(Parsed::Complete { status: 200, len: RESPONSE.len() }));
    }

    #[test]
    fn header_order_and_case_do_not_matter() {
        let r = b"HTTP/1.0 404 Not Found\r\nserver: x\r\ncontent-LENGTH:  3 \r\n\r\nabc";
        assert_eq!(parse_response(r), Ok(Parsed::Complete { status: 404, len: r.len() }));
        let empty = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(empty), Ok(Parsed::Complete { status: 204, len: empty.len() }));
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"SSH-2.0 x\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(&vec![b'x'; MAX_HEAD + 1]).is_err());
    }

    #[test]
    fn requests_split_and_pipelined() {
        let three = [REQUEST, REQUEST, REQUEST].concat();
        assert_eq!(split_requests(&three, 0), (3, three.len()));
        let partial = &three[..REQUEST.len() + 5];
        assert_eq!(split_requests(partial, 0), (1, REQUEST.len()));
        // The terminator itself split across reads, with the earlier part already scanned.
        let cut = REQUEST.len() - 2;
        assert_eq!(split_requests(&REQUEST[..cut], 0), (0, 0));
        assert_eq!(split_requests(REQUEST, cut), (1, REQUEST.len()));
    }
}
