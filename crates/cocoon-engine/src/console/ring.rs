//! The last [`RING_BYTES`](super::RING_BYTES) of output, replayed to a client
//! when it attaches so it sees the prompt (or the panic) it came for.

use std::collections::VecDeque;

pub(super) struct Ring {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl Ring {
    pub(super) fn new(capacity: usize) -> Ring {
        Ring {
            bytes: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub(super) fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(data);
    }

    pub(super) fn copy_into(&self, out: &mut VecDeque<u8>) {
        let (a, b) = self.bytes.as_slices();
        out.extend(a);
        out.extend(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(ring: &Ring) -> Vec<u8> {
        let mut out = VecDeque::new();
        ring.copy_into(&mut out);
        out.into()
    }

    #[test]
    fn keeps_exactly_the_last_capacity_bytes() {
        let mut ring = Ring::new(4);
        ring.push(b"ab");
        assert_eq!(contents(&ring), b"ab");
        ring.push(b"cde");
        assert_eq!(contents(&ring), b"bcde");
        ring.push(b"0123456");
        assert_eq!(contents(&ring), b"3456");
    }
}
