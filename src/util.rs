//! Small helpers used along the whole request path and by the config loader alike
//! (no step of its own): hex encoding of digests and ids.

/// Lower-case hex of `b` (SHA-256 digests, request ids, token ids).
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    // Behaviour: two lower-case digits per byte, high nibble first.
    #[test]
    fn hex_digits() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::hex(&[]), "");
    }
}
