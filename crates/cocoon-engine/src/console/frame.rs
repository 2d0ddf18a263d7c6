//! Client → relay framing: `[kind: u8][len: u16 big-endian][payload]`.
//! Framed rather than raw so a window size can travel in-band with the input.

pub(super) const KIND_INPUT: u8 = 0;
pub(super) const KIND_WINSIZE: u8 = 1;
const HEADER: usize = 3;
const MAX_PAYLOAD: usize = u16::MAX as usize;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    Input(&'a [u8]),
    WindowSize {
        rows: u16,
        cols: u16,
    },
    /// A kind this relay does not know: skipped, so newer clients still work.
    Unknown,
}

/// Appends `input` as one or more input frames.
pub(super) fn encode_input(input: &[u8], out: &mut Vec<u8>) {
    for chunk in input.chunks(MAX_PAYLOAD) {
        push(KIND_INPUT, chunk, out);
    }
}

pub(super) fn encode_winsize(rows: u16, cols: u16, out: &mut Vec<u8>) {
    let [r0, r1] = rows.to_be_bytes();
    let [c0, c1] = cols.to_be_bytes();
    push(KIND_WINSIZE, &[r0, r1, c0, c1], out);
}

fn push(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    let len = u16::try_from(payload.len()).expect("payloads are at most MAX_PAYLOAD bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits the first complete frame off `buf`: the frame and its length in
/// bytes, or `None` while the frame is still incomplete.
pub(super) fn decode(buf: &[u8]) -> Option<(Frame<'_>, usize)> {
    let header = buf.get(..HEADER)?;
    let len = u16::from_be_bytes([header[1], header[2]]) as usize;
    let payload = buf.get(HEADER..HEADER + len)?;
    let frame = match (header[0], payload) {
        (KIND_INPUT, bytes) => Frame::Input(bytes),
        (KIND_WINSIZE, &[r0, r1, c0, c1]) => Frame::WindowSize {
            rows: u16::from_be_bytes([r0, r1]),
            cols: u16::from_be_bytes([c0, c1]),
        },
        _ => Frame::Unknown,
    };
    Some((frame, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_completion() {
        let mut buf = Vec::new();
        encode_input(b"hi", &mut buf);
        encode_winsize(40, 120, &mut buf);
        buf.extend_from_slice(&[9, 0, 1, 0xff]); // unknown kind
        buf.extend_from_slice(&[KIND_INPUT, 0, 5, b'x']); // incomplete

        let (frame, used) = decode(&buf).unwrap();
        assert_eq!(frame, Frame::Input(b"hi"));
        let rest = &buf[used..];
        let (frame, used) = decode(rest).unwrap();
        assert_eq!(
            frame,
            Frame::WindowSize {
                rows: 40,
                cols: 120
            }
        );
        let rest = &rest[used..];
        let (frame, used) = decode(rest).unwrap();
        assert_eq!(frame, Frame::Unknown);
        assert_eq!(decode(&rest[used..]), None);
    }

    #[test]
    fn long_input_is_split_into_max_frames() {
        let input = vec![7u8; MAX_PAYLOAD + 10];
        let mut buf = Vec::new();
        encode_input(&input, &mut buf);
        let (first, used) = decode(&buf).unwrap();
        assert_eq!(first, Frame::Input(&input[..MAX_PAYLOAD]));
        let (second, rest) = decode(&buf[used..]).unwrap();
        assert_eq!(second, Frame::Input(&input[..10]));
        assert_eq!(used + rest, buf.len());
    }
}
