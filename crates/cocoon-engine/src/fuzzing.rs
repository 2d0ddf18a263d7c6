//! Shared pieces of the bounded fuzz tests (proptest) over the parsers that
//! read hostile input: how many cases a run takes, and byte-level mutations of
//! a valid input (bytes set, flipped, cut, inserted, and optionally
//! little-endian header fields set to extreme values).

use proptest::prelude::*;

/// Cases per fuzz test: `COCOON_FUZZ_CASES`, default 256 (a few seconds each
/// in CI; raise it locally to search longer).
pub(crate) fn cases() -> u32 {
    std::env::var("COCOON_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    /// A 32-bit little-endian field at this offset set to an extreme or
    /// random value.
    Field(usize, u32),
}

/// Byte mutations anywhere, plus [`Mutation::Field`] at `fields` (none when
/// empty).
pub(crate) fn mutation(fields: &'static [usize]) -> BoxedStrategy<Mutation> {
    let bytes = prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
    ];
    if fields.is_empty() {
        return bytes.boxed();
    }
    let value = prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(u32::MAX - 3),
        Just(0x7fff_ffff),
        any::<u32>(),
    ];
    let field =
        (proptest::sample::select(fields), value).prop_map(|(at, v)| Mutation::Field(at, v));
    prop_oneof![9 => bytes, 2 => field].boxed()
}

/// `bytes` with `mutations` applied in order (offsets wrap around the
/// current length).
pub(crate) fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match m {
            Mutation::Set(at, b) => bytes[at % len] = *b,
            Mutation::Flip(at, bit) => bytes[at % len] ^= 1 << bit,
            Mutation::Cut(at) => bytes.truncate(at % len),
            Mutation::Insert(at, more) => {
                let at = at % len;
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Field(at, v) => {
                for (i, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_do_what_they_say() {
        let m = |ms: &[Mutation]| mutate(vec![1, 2, 3, 4, 5, 6], ms);
        assert_eq!(m(&[Mutation::Set(7, 9)]), [1, 9, 3, 4, 5, 6]);
        assert_eq!(m(&[Mutation::Flip(0, 1)]), [3, 2, 3, 4, 5, 6]);
        assert_eq!(m(&[Mutation::Cut(2)]), [1, 2]);
        assert_eq!(
            m(&[Mutation::Insert(1, vec![7, 8])]),
            [1, 7, 8, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            m(&[Mutation::Field(4, 0x0a0b_0c0d)]),
            [1, 2, 3, 4, 0x0d, 0x0c]
        );
        assert_eq!(mutate(vec![], &[Mutation::Set(0, 1)]), Vec::<u8>::new());
    }
}
