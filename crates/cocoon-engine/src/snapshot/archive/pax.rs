//! PAX extended header records, parsed by length (the tar crate's parser
//! splits at newlines, which values may contain).

use std::collections::BTreeMap;

/// PAX records: `"<len> <key>=<value>\n"`, len counting the whole record.
/// Values are taken by length, not split at newlines.
pub(super) fn parse_pax(mut data: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut records = BTreeMap::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or("a record does not start with its length")?;
        let len = parse_decimal(&data[..space])
            .and_then(|len| usize::try_from(len).ok())
            .ok_or("a record length is not a number")?;
        if len <= space + 1 || len > data.len() {
            return Err(format!("a record length of {len} bytes does not fit"));
        }
        let body = data[space + 1..len]
            .strip_suffix(b"\n")
            .ok_or("a record does not end with a newline")?;
        let equals = body
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a record has no '='")?;
        let key = std::str::from_utf8(&body[..equals]).map_err(|_| "a key is not UTF-8")?;
        records.insert(key.to_string(), body[equals + 1..].to_vec());
        data = &data[len..];
    }
    Ok(records)
}

/// A plain decimal number (no sign, no spaces), as PAX values are.
pub(super) fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_parse_by_length() {
        let records = parse_pax(b"9 path=x\n18 comment=a\nb=c\n\n").unwrap();
        assert_eq!(records["path"], b"x");
        // The value is taken by length: newlines and '=' inside are data.
        assert_eq!(records["comment"], b"a\nb=c\n");
        assert_eq!(
            parse_pax(b"8 path=x\n").unwrap_err(),
            "a record does not end with a newline"
        );
        assert_eq!(
            parse_pax(b"99 path=x\n").unwrap_err(),
            "a record length of 99 bytes does not fit"
        );
        assert_eq!(
            parse_pax(b"x path=x\n").unwrap_err(),
            "a record length is not a number"
        );
        assert_eq!(parse_pax(b"7 path\n").unwrap_err(), "a record has no '='");
        assert_eq!(
            parse_pax(b"pathx\n").unwrap_err(),
            "a record does not start with its length"
        );
    }
}
