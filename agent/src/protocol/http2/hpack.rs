//! HPACK (RFC 7541) header decoding that never guesses.
//!
//! The dynamic table is indexed newest first, so a decoder that starts in the middle of a
//! connection (its table empty) still knows every entry inserted since: those keep their true
//! positions. A reference beyond what it saw is reported as unknown, not looked up. When an
//! insertion may have been missed (a header block in a capture gap, a malformed block), every
//! entry known so far is marked unknown; entries inserted afterwards are known again. The
//! static table never changes, so its references always decode.

use std::{collections::VecDeque, sync::Arc};

use httlib_huffman::DecoderSpeed;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Initial dynamic table size (SETTINGS_HEADER_TABLE_SIZE default).
const DEFAULT_TABLE: usize = 4096;
/// The most the agent keeps per table, whatever the peers agreed.
const MAX_TABLE: usize = 64 * 1024;
/// Longest name or value decoded.
const MAX_STRING: usize = 16 * 1024;

/// A dynamic table entry; `None` for what is not known.
#[derive(Debug, Clone)]
struct Entry {
    name: Option<Arc<str>>,
    value: Option<Arc<str>>,
    size: usize,
}

/// The fields of one header block.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub fields: Vec<(String, String)>,
    /// Fields that could not be decoded (their names may be among them).
    pub unknown: usize,
}

/// One direction's decoding state.
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The block is malformed from here on.
struct Malformed;

/// Reads an integer with an `n`-bit prefix at `b[*pos]`.
fn integer(b: &[u8], pos: &mut usize, n: u32) -> Result<usize, Malformed> {
    let mask = (1usize << n) - 1;
    let first = *b.get(*pos).ok_or(Malformed)? as usize & mask;
    *pos += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos).ok_or(Malformed)?;
        *pos += 1;
        value = value
            .checked_add(((byte & 0x7f) as usize) << shift)
            .ok_or(Malformed)?;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 28 {
            return Err(Malformed);
        }
    }
}

/// Reads a string literal (plain or Huffman-coded).
fn string(b: &[u8], pos: &mut usize) -> Result<Arc<str>, Malformed> {
    let huffman = b.get(*pos).ok_or(Malformed)? & 0x80 != 0;
    let len = integer(b, pos, 7)?;
    if len > MAX_STRING {
        return Err(Malformed);
    }
    let raw = b.get(*pos..*pos + len).ok_or(Malformed)?;
    *pos += len;
    if huffman {
        let mut out = Vec::with_capacity(len * 8 / 5);
        httlib_huffman::decode(raw, &mut out, DecoderSpeed::FourBits).map_err(|_| Malformed)?;
        Ok(Arc::from(String::from_utf8_lossy(&out).as_ref()))
    } else {
        Ok(Arc::from(String::from_utf8_lossy(raw).as_ref()))
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE,
        }
    }

    /// Insertions may have been missed (a header block in a capture gap): what the table holds
    /// can no longer be trusted, only its newer entries will be.
    pub fn mark_missed(&mut self) {
        for e in &mut self.table {
            e.name = None;
            e.value = None;
        }
    }

    /// (name, value) at a table index (1-based: static, then dynamic newest first).
    fn lookup(&self, index: usize) -> (Option<Arc<str>>, Option<Arc<str>>) {
        match index {
            0 => (None, None),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                (Some(Arc::from(n)), Some(Arc::from(v)))
            }
            _ => self
                .table
                .get(index - 62)
                .map_or((None, None), |e| (e.name.clone(), e.value.clone())),
        }
    }

    fn insert(&mut self, name: Option<Arc<str>>, value: Option<Arc<str>>) {
        // The size of an entry whose name or value is unknown is only estimated; eviction then
        // may differ from the peer's, which is harmless: the peer never refers past its own
        // table, and an entry the agent dropped early is merely unknown.
        let size =
            32 + name.as_deref().map_or(16, str::len) + value.as_deref().map_or(16, str::len);
        self.table.push_front(Entry { name, value, size });
        self.size += size;
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size.min(MAX_TABLE) || self.table.len() > MAX_TABLE / 32 {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }

    /// Decodes one complete header block.
    pub fn decode(&mut self, block: &[u8]) -> Decoded {
        let mut out = Decoded::default();
        if self.decode_into(block, &mut out).is_err() {
            // The rest of the block, and whatever it inserted, is lost.
            out.unknown += 1;
            self.mark_missed();
        }
        out
    }

    /// Decodes the captured start of a header block whose end was not captured: the complete
    /// representations are decoded, then the table is marked as having missed insertions.
    pub fn decode_truncated(&mut self, prefix: &[u8]) -> Decoded {
        let mut out = Decoded::default();
        let _ = self.decode_into(prefix, &mut out);
        out.unknown += 1;
        self.mark_missed();
        out
    }

    fn decode_into(&mut self, b: &[u8], out: &mut Decoded) -> Result<(), Malformed> {
        let mut pos = 0;
        while pos < b.len() {
            let first = b[pos];
            let (name, value) = if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(b, &mut pos, 7)?;
                if index == 0 {
                    return Err(Malformed);
                }
                self.lookup(index)
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                self.max_size = integer(b, &mut pos, 5)?;
                self.evict();
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed
                // (0001).
                let incremental = first & 0xc0 == 0x40;
                let index = integer(b, &mut pos, if incremental { 6 } else { 4 })?;
                let name = if index == 0 {
                    Some(string(b, &mut pos)?)
                } else {
                    self.lookup(index).0
                };
                let value = Some(string(b, &mut pos)?);
                if incremental {
                    self.insert(name.clone(), value.clone());
                }
                (name, value)
            };
            match (name, value) {
                (Some(n), Some(v)) => out.fields.push((n.to_string(), v.to_string())),
                _ => out.unknown += 1,
            }
        }
        Ok(())
    }
}

/// The `:method` of a header block's first field when it can be told without any table
/// state (an indexed `:method GET`/`POST`, or a literal with the static `:method` name):
/// `Some(true)` for a request block, `Some(false)` for a `:status` (response) block.
pub fn starts_request(block: &[u8]) -> Option<bool> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            2 | 3 => Some(true),
            8..=14 => Some(false),
            _ => None,
        };
    }
    let index = if first & 0xc0 == 0x40 {
        first & 0x3f
    } else if first & 0xe0 == 0x20 {
        return None;
    } else {
        first & 0x0f
    };
    match index {
        2 | 3 => Some(true),
        8..=14 => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(clean).unwrap()
    }

    fn fields(d: &Decoded) -> Vec<(&str, &str)> {
        d.fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// RFC 7541 C.4: three requests with Huffman coding sharing one dynamic table.
    #[test]
    fn rfc_examples_with_huffman() {
        let mut d = Decoder::new();
        let r1 = d.decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        assert_eq!(
            fields(&r1),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]
        );
        let r2 = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(fields(&r2)[3], (":authority", "www.example.com"));
        assert_eq!(fields(&r2)[4], ("cache-control", "no-cache"));
        assert_eq!(r2.unknown, 0);
    }

    #[test]
    fn mid_stream_start_reports_unknown_not_wrong() {
        // The peer's table already holds entries we never saw: index 62 is unknown to us.
        let mut d = Decoder::new();
        let r = d.decode(&hex("82 be 86"));
        assert_eq!(fields(&r), [(":method", "GET"), (":scheme", "http")]);
        assert_eq!(r.unknown, 1);
        // After an insertion, index 62 is that new entry (and 63 still unknown).
        let r = d.decode(&hex("40 03 61 62 63 03 78 79 7a be bf"));
        assert_eq!(fields(&r), [("abc", "xyz"), ("abc", "xyz")]);
        assert_eq!(r.unknown, 1);
        // A missed block makes every entry so far unknown; later insertions are known.
        d.mark_missed();
        let r = d.decode(&hex("be 40 01 6b 01 76 be bf"));
        assert_eq!(fields(&r), [("k", "v"), ("k", "v")]);
        assert_eq!(r.unknown, 2);
    }

    #[test]
    fn request_or_response_from_the_first_field() {
        assert_eq!(starts_request(&hex("82 86")), Some(true));
        assert_eq!(starts_request(&hex("83")), Some(true));
        assert_eq!(starts_request(&hex("88")), Some(false));
        assert_eq!(starts_request(&hex("48 03 33 30 32")), Some(false));
        assert_eq!(starts_request(&hex("be")), None);
    }

    /// An independent encoder's output decodes to the same fields, block after block, sharing
    /// one dynamic table.
    #[test]
    fn round_trips_an_independent_encoder() {
        let mut enc = fluke_hpack::Encoder::new();
        let mut dec = Decoder::new();
        let mut seed = 0x1357_9bdf_u64;
        for round in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut headers: Vec<(Vec<u8>, Vec<u8>)> = vec![
                (
                    b":method".to_vec(),
                    if seed.is_multiple_of(2) {
                        b"GET".to_vec()
                    } else {
                        b"POST".to_vec()
                    },
                ),
                (
                    b":path".to_vec(),
                    format!("/svc.Api/Call{}", seed % 7).into_bytes(),
                ),
                (b":authority".to_vec(), b"api.local:50051".to_vec()),
            ];
            for i in 0..(seed % 5) {
                headers.push((
                    format!("x-custom-{}", (seed >> i) % 9).into_bytes(),
                    format!("value-{round}-{i}").into_bytes(),
                ));
            }
            let block = enc.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            let got = dec.decode(&block);
            assert_eq!(got.unknown, 0, "round {round}");
            let want: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| {
                    (
                        String::from_utf8(n.clone()).unwrap(),
                        String::from_utf8(v.clone()).unwrap(),
                    )
                })
                .collect();
            assert_eq!(got.fields, want, "round {round}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2468_ace0_u64;
        let mut d = Decoder::new();
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let block: Vec<u8> = (0..(seed % 40)).map(|i| (seed >> (i % 56)) as u8).collect();
            let _ = d.decode(&block);
            let _ = d.decode_truncated(&block);
        }
        // Huge integers and lengths are refused, not allocated.
        let _ = d.decode(&hex("7f ff ff ff ff ff ff"));
        let _ = d.decode(&hex("40 7f ff ff ff 0f"));
    }
}
