//! Length-prefixed messages at the front of a [`Stream`], for the binary protocols (PostgreSQL,
//! MySQL): whether a whole message has arrived, its captured bytes, and when it travelled.
//! A message whose header fell in a capture gap cannot be framed: the caller resynchronises.

use crate::conn::{Stream, SyscallTime};

/// The message at the front of a stream.
#[derive(Debug)]
pub enum Msg<'a> {
    /// Not all of it has arrived yet.
    NeedMore,
    /// Its header was not captured, or is not a header: framing is lost.
    Lost,
    /// All of it has arrived: its total length (header included), the captured prefix, and the
    /// syscalls that carried its first and last bytes.
    Ready {
        total: u64,
        bytes: &'a [u8],
        first: SyscallTime,
        last: SyscallTime,
    },
}

/// Frames the message at the front of `s`. `header` bytes are needed to know its length, which
/// `total_len` computes from them (header included); `None` means the bytes are not a header.
pub fn message(s: &Stream, header: usize, total_len: impl Fn(&[u8]) -> Option<u64>) -> Msg<'_> {
    if s.available() == 0 {
        return Msg::NeedMore;
    }
    let head = s.head();
    if head.len() < header {
        // Fewer header bytes captured than needed: a gap (lost) or not there yet.
        return if s.at_gap() || (head.len() as u64) < s.available() {
            Msg::Lost
        } else {
            Msg::NeedMore
        };
    }
    let Some(total) = total_len(&head[..header]) else {
        return Msg::Lost;
    };
    if total < header as u64 {
        return Msg::Lost;
    }
    if total > s.available() {
        return Msg::NeedMore;
    }
    let time = |off: u64| s.time_at(off).unwrap_or_default();
    Msg::Ready {
        total,
        bytes: &head[..head.len().min(total as usize)],
        first: time(s.pos()),
        last: time(s.pos() + total - 1),
    }
}

/// A NUL-terminated string at the start of `b`, and the bytes after it.
pub fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((std::str::from_utf8(&b[..end]).ok()?, &b[end + 1..]))
}

/// Like [`cstr`], but a string cut short by the end of the captured bytes is returned as is.
pub fn cstr_lossy(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> SyscallTime {
        SyscallTime {
            enter_ns: n,
            exit_ns: n + 1,
            tid: 1,
        }
    }

    fn len_be(h: &[u8]) -> Option<u64> {
        Some(u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as u64 + 1)
    }

    #[test]
    fn frames_split_and_gapped_messages() {
        let mut s = Stream::new(1 << 16);
        s.push(b"Q\0\0", 3, t(1));
        assert!(matches!(message(&s, 5, len_be), Msg::NeedMore));
        s.push(b"\0\x08ab", 4, t(2));
        assert!(matches!(message(&s, 5, len_be), Msg::NeedMore));
        s.push(b"c\0", 2, t(3));
        match message(&s, 5, len_be) {
            Msg::Ready {
                total,
                bytes,
                first,
                last,
            } => {
                assert_eq!(total, 9);
                assert_eq!(bytes, b"Q\0\0\0\x08abc\0");
                assert_eq!((first, last), (t(1), t(3)));
            }
            other => panic!("{other:?}"),
        }
        s.consume(9);
        // A header inside a gap cannot be framed.
        s.push(b"D\0", 100, t(4));
        assert!(matches!(message(&s, 5, len_be), Msg::Lost));
        assert_eq!(cstr(b"abc\0rest"), Some(("abc", &b"rest"[..])));
        assert_eq!(cstr(b"abc"), None);
        assert_eq!(cstr_lossy(b"ab"), "ab");
    }
}
