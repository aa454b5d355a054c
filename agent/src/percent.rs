//! `%XX` decoding, as the W3C Baggage encoding (`OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`) and gRPC's `grpc-message` header use it.

/// Decodes `%XX` escapes; an invalid escape is kept as written, and bytes that do not form
/// UTF-8 afterwards are replaced (the input comes from users and from the network).
pub fn decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Two hex digits exactly (`from_str_radix` would also take a sign).
        let hex = |at: usize| bytes.get(at).and_then(|&c| (c as char).to_digit(16));
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2))
        {
            out.push((h * 16 + l) as u8);
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
        assert_eq!(decode(b"%+f"), "%+f");
        assert_eq!(decode(b"%E2%80%A6"), "\u{2026}");
    }
}
