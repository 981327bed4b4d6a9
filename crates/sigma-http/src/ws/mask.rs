//! Client-to-server payload masking (RFC 6455 §5.3).
//!
//! Place in `T → H → A`: inside `H`, on the client-facing side; every
//! payload byte a client sends passes through [`apply_mask`] once, in place,
//! as it arrives. A payload may arrive in pieces, so the caller passes the
//! offset of the piece within the frame. Server frames are never masked, and
//! this file does not check that a mask was present (`frame.rs` does).

/// XORs `buf` with the masking `key`, as if `buf` started at byte `offset`
/// of the frame payload. Applying it twice restores the input.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut rotated = key;
    rotated.rotate_left(offset % 4);
    let [a, b, c, d] = rotated;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*word) {
            word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
        }
    }
    for (byte, k) in words
        .into_remainder()
        .iter_mut()
        .zip(rotated.iter().cycle())
    {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut v = vec![0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut v, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(v, b"Hello");
    }

    #[test]
    fn empty_and_short() {
        let mut v: Vec<u8> = Vec::new();
        apply_mask(&mut v, [1, 2, 3, 4], 3);
        let mut v = vec![0u8; 3];
        apply_mask(&mut v, [1, 2, 3, 4], 1);
        assert_eq!(v, [2, 3, 4]);
    }

    proptest! {
        #[test]
        fn matches_naive_in_pieces(data in proptest::collection::vec(any::<u8>(), 0..100),
                                   key in any::<[u8; 4]>(), cut in 0usize..100) {
            let mut expect = data.clone();
            naive(&mut expect, key, 0);
            let mut got = data.clone();
            let cut = cut.min(got.len());
            let (a, b) = got.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            prop_assert_eq!(&got, &expect);
            apply_mask(&mut got, key, 0);
            prop_assert_eq!(got, data);
        }
    }
}
