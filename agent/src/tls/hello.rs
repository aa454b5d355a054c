//! The cleartext start of a TLS connection, as the socket probes see it: enough to know that
//! a connection is TLS (so its ciphertext is not mistaken for an unknown protocol) and which
//! version the server chose (`tls.protocol.version`). Nothing here decrypts anything.

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
/// The `supported_versions` extension: in a TLS 1.3 ServerHello it holds the real version.
const SUPPORTED_VERSIONS: u16 = 43;

/// A negotiated protocol version, as on the wire (`0x0303` is TLS 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(pub u16);

impl Version {
    /// The `tls.protocol.version` value.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0300 => "3.0",
            0x0301 => "1.0",
            0x0302 => "1.1",
            0x0303 => "1.2",
            0x0304 => "1.3",
            _ => return None,
        })
    }
}

/// What the first bytes of one direction are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A handshake record holding a ClientHello: the sender is the client.
    Client,
    /// A handshake record holding a ServerHello; the version when the captured bytes reach it.
    Server(Option<Version>),
}

/// Recognises a TLS handshake record carrying a ClientHello or ServerHello.
pub fn sniff(b: &[u8]) -> Option<Hello> {
    // Record header: type, legacy version 3.x, 2-byte length; then the handshake header.
    let [kind, major, minor, _, _, msg, ..] = *b else {
        return None;
    };
    if kind != HANDSHAKE || major != 3 || minor > 4 {
        return None;
    }
    match msg {
        CLIENT_HELLO => Some(Hello::Client),
        SERVER_HELLO => Some(Hello::Server(server_version(&b[5..]))),
        _ => None,
    }
}

/// True while `b` could still grow into a ServerHello whose version is readable: TLS clients
/// often read a record's 5-byte header and its body in two calls.
pub fn server_hello_incomplete(b: &[u8]) -> bool {
    if b.len() < 6 {
        return b.first().is_none_or(|&k| k == HANDSHAKE);
    }
    let record = 5 + u16::from_be_bytes([b[3], b[4]]) as usize;
    matches!(sniff(b), Some(Hello::Server(None))) && b.len() < record
}

/// The version a ServerHello (starting at its handshake header) selects.
fn server_version(m: &[u8]) -> Option<Version> {
    let mut r = Reader(m.get(4..)?);
    let legacy = Version(r.u16()?);
    r.skip(32)?; // random
    let session = r.u8()? as usize;
    r.skip(session)?;
    r.skip(3)?; // cipher suite, compression method
    let Some(ext_len) = r.u16() else {
        return Some(legacy); // no extensions: TLS 1.2 or earlier
    };
    let mut ext = Reader(r.take(ext_len as usize)?);
    while let (Some(kind), Some(len)) = (ext.u16(), ext.u16()) {
        let body = ext.take(len as usize)?;
        if kind == SUPPORTED_VERSIONS {
            return Some(Version(Reader(body).u16()?));
        }
    }
    Some(legacy)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_hello(version: u16, extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(4);
        body.extend([1, 2, 3, 4]);
        body.extend([0x13, 0x01, 0x00]);
        if !extensions.is_empty() {
            let mut ext = Vec::new();
            for (kind, data) in extensions {
                ext.extend(kind.to_be_bytes());
                ext.extend((data.len() as u16).to_be_bytes());
                ext.extend(*data);
            }
            body.extend((ext.len() as u16).to_be_bytes());
            body.extend(ext);
        }
        let mut msg = vec![SERVER_HELLO, 0, 0, body.len() as u8];
        msg.extend(body);
        let mut rec = vec![HANDSHAKE, 3, (version & 0xff) as u8];
        rec.extend((msg.len() as u16).to_be_bytes());
        rec.extend(msg);
        rec
    }

    #[test]
    fn versions_from_server_hellos() {
        let tls13 = server_hello(0x0303, &[(51, &[0, 29]), (43, &[3, 4])]);
        assert_eq!(sniff(&tls13), Some(Hello::Server(Some(Version(0x0304)))));
        let tls12 = server_hello(0x0303, &[(0xff01, &[0])]);
        assert_eq!(sniff(&tls12), Some(Hello::Server(Some(Version(0x0303)))));
        let bare = server_hello(0x0303, &[]);
        assert_eq!(sniff(&bare), Some(Hello::Server(Some(Version(0x0303)))));
        assert_eq!(Version(0x0304).name(), Some("1.3"));
        assert_eq!(Version(0x7f1c).name(), None);
    }

    #[test]
    fn a_server_hello_read_in_pieces() {
        let full = server_hello(0x0303, &[(43, &[3, 4])]);
        assert!(
            server_hello_incomplete(&full[..5]),
            "the record header alone"
        );
        assert!(server_hello_incomplete(&full[..20]));
        assert!(!server_hello_incomplete(&full));
        assert!(!server_hello_incomplete(b"\x17\x03\x03\x00\x10"));
        assert!(server_hello_incomplete(b""));
    }

    #[test]
    fn client_hello_and_other_bytes() {
        assert_eq!(
            sniff(&[22, 3, 1, 0, 200, 1, 0, 0, 196]),
            Some(Hello::Client)
        );
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(sniff(&[23, 3, 3, 0, 20, 9]), None, "application data");
        assert_eq!(sniff(&[22, 3, 3]), None, "too short");
    }

    #[test]
    fn truncated_and_garbage_never_panic() {
        let full = server_hello(0x0303, &[(43, &[3, 4])]);
        for n in 0..full.len() {
            let _ = sniff(&full[..n]);
        }
        let mut seed = 0x2545_f491_u64;
        for _ in 0..2000 {
            let mut b = full.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            let _ = sniff(&b);
        }
    }
}
