//! Lower-case hexadecimal text of bytes: digests in file names and messages, error ids.

/// `bytes` as lower-case hex, two digits per byte (`[0x0a, 0xff]` -> `"0aff"`; empty for
/// no bytes).
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_lower_case_digits_per_byte() {
        assert_eq!(super::encode(&[]), "");
        assert_eq!(super::encode(&[0x00, 0x0a, 0xff, 0x5c]), "000aff5c");
    }
}
