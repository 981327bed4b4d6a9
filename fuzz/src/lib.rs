//! The input layout the splitting fuzz targets share (`h1_request`,
//! `h1_chunked`, `ws_frame`): the fuzzer's bytes stand for what `T`
//! hands `H`, fed once whole and once split into pieces, and the two runs
//! must agree.
//!
//! Layout: byte 0 = flags (bit 0: the target's small limits; bits 1–2:
//! split mode: bytewise, two pieces, pieces of 1–8, pieces of 1–64),
//! byte 1 = split seed, the rest = the data.

/// A fuzz input, taken apart.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Byte 0: bit 0 picks small limits, bits 1–2 the split mode.
    pub flags: u8,
    /// Byte 1: seeds the split lengths.
    pub seed: u8,
    /// The rest: the bytes fed to the code under test.
    pub data: &'a [u8],
}

impl<'a> Input<'a> {
    /// `None` for an input shorter than its two control bytes.
    pub fn parse(input: &'a [u8]) -> Option<Self> {
        match input {
            [flags, seed, data @ ..] => Some(Self {
                flags: *flags,
                seed: *seed,
                data,
            }),
            _ => None,
        }
    }

    /// Bit 0: the target should use its small limits.
    pub fn small_limits(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The data split as bits 1–2 of the flags and the seed choose.
    pub fn pieces(&self) -> Vec<&'a [u8]> {
        split(self.data, self.flags >> 1, self.seed)
    }
}

/// Splits `data` into pieces chosen by `mode` (its low two bits: 0
/// bytewise, 1 two pieces at one offset, 2 pieces of 1–8 bytes, 3 pieces
/// of 1–64) and `seed`. The pieces, joined, are `data`.
pub fn split(data: &[u8], mode: u8, seed: u8) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    let mut x = u32::from(seed) | 0x100;
    match mode & 3 {
        // One byte at a time.
        0 => pieces.extend(data.chunks(1)),
        // Two pieces at one offset.
        1 => {
            let at = if data.is_empty() {
                0
            } else {
                usize::from(seed) % data.len()
            };
            let (a, b) = data.split_at(at);
            pieces.push(a);
            pieces.push(b);
        }
        // Random small or larger pieces.
        m => {
            let max = if m == 2 { 8 } else { 64 };
            while !rest.is_empty() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let n = (x as usize % max + 1).min(rest.len());
                let (a, b) = rest.split_at(n);
                pieces.push(a);
                rest = b;
            }
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_to_the_data() {
        let data: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 2, 7, 100, 256] {
            let d = &data[..len];
            for mode in 0..8 {
                for seed in [0, 1, 77, 255] {
                    let pieces = split(d, mode, seed);
                    assert_eq!(pieces.concat(), d, "mode {mode} seed {seed}");
                    match mode & 3 {
                        0 => assert!(pieces.iter().all(|p| p.len() == 1)),
                        1 => assert_eq!(pieces.len(), 2),
                        2 => assert!(pieces.iter().all(|p| (1..=8).contains(&p.len()))),
                        _ => assert!(pieces.iter().all(|p| (1..=64).contains(&p.len()))),
                    }
                }
            }
        }
        let i = Input::parse(&[3, 9, b'a', b'b']).unwrap();
        assert!(i.small_limits());
        assert_eq!((i.seed, i.data), (9, &b"ab"[..]));
        assert!(Input::parse(&[1]).is_none());
    }
}
