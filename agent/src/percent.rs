//! `%XX` decoding, as both the W3C Baggage encoding (`OTEL_RESOURCE_ATTRIBUTES`) and gRPC's
//! `grpc-message` header use it.

/// Decodes `%XX` escapes; an invalid escape is kept as written, and bytes that do not form
/// UTF-8 afterwards are replaced (the input comes from users and from the network).
pub fn decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn escapes_decode_and_invalid_ones_stay() {
        assert_eq!(decode(b"cart%20api"), "cart api");
        assert_eq!(decode(b"100%"), "100%");
        assert_eq!(decode(b"%zz%4"), "%zz%4");
        assert_eq!(decode(b"%E2%80%A6"), "\u{2026}");
    }
}
