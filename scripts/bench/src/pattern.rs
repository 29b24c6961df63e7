//! Deterministic payload bytes: byte `i` of every generated body is `i % 251`. Senders slice
//! chunks out of one shared buffer, so generating a 1 GiB body allocates nothing per chunk,
//! and receivers check every byte with slice comparisons.

use std::sync::OnceLock;

use bytes::Bytes;

/// Length of the repeating pattern. A prime, so the pattern never lines up with power-of-two
/// chunk or frame sizes and a dropped or repeated chunk shows up as a mismatch.
const PERIOD: usize = 251;

/// Largest chunk [`chunk`] returns.
pub const CHUNK_LEN: usize = 64 * 1024;

fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let bytes: Vec<u8> = (0..CHUNK_LEN + PERIOD)
            .map(|i| (i % PERIOD) as u8)
            .collect();
        Bytes::from(bytes)
    })
}

/// Returns the pattern bytes at `offset..offset + len` of a body; `len` is capped at
/// [`CHUNK_LEN`].
pub fn chunk(offset: u64, len: usize) -> Bytes {
    let start = (offset % PERIOD as u64) as usize;
    pattern().slice(start..start + len.min(CHUNK_LEN))
}

/// Splits a body of `total` bytes into pattern chunks of at most [`CHUNK_LEN`] bytes.
pub fn chunks(total: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    let chunk_len = CHUNK_LEN as u64;
    (0..total.div_ceil(chunk_len)).map(move |index| {
        let offset = index * chunk_len;
        let len = (total - offset).min(chunk_len) as usize;
        chunk(offset, len)
    })
}

/// Checks a body against the pattern as its data arrives.
#[derive(Debug, Default)]
pub struct Checker {
    received: u64,
    first_mismatch: Option<u64>,
}

impl Checker {
    /// Checks the next piece of the body.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let len = data.len().min(CHUNK_LEN);
            let (piece, rest) = data.split_at(len);
            if self.first_mismatch.is_none() {
                let expected = chunk(self.received, len);
                if piece != &expected[..] {
                    let index = piece
                        .iter()
                        .zip(expected.iter())
                        .position(|(got, want)| got != want)
                        .unwrap_or(0);
                    self.first_mismatch = Some(self.received + index as u64);
                }
            }
            self.received += len as u64;
            data = rest;
        }
    }

    /// Number of bytes checked so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Offset of the first byte that differs from the pattern, if any.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }
}

#[cfg(test)]
mod tests {
    use super::{chunks, Checker, CHUNK_LEN};

    #[test]
    fn chunks_cover_total() {
        let total = 3 * CHUNK_LEN as u64 + 17;
        let lengths: Vec<usize> = chunks(total).map(|chunk| chunk.len()).collect();
        assert_eq!(lengths.len(), 4);
        assert_eq!(lengths.iter().sum::<usize>() as u64, total);
        assert_eq!(lengths[3], 17);
    }

    #[test]
    fn checker_accepts_pattern() {
        let mut checker = Checker::default();
        for chunk in chunks(200_000) {
            // Feed in uneven pieces, as a network read would.
            let (head, tail) = chunk.split_at(chunk.len() / 3);
            checker.update(head);
            checker.update(tail);
        }
        assert_eq!(checker.received(), 200_000);
        assert_eq!(checker.first_mismatch(), None);
    }

    #[test]
    fn checker_finds_flipped_byte() {
        let mut body: Vec<u8> = chunks(100_000).flat_map(|chunk| chunk.to_vec()).collect();
        body[70_001] ^= 0xff;
        let mut checker = Checker::default();
        checker.update(&body);
        assert_eq!(checker.first_mismatch(), Some(70_001));
    }

    #[test]
    fn checker_finds_dropped_chunk() {
        let body: Vec<u8> = chunks(300_000)
            .enumerate()
            .filter(|(index, _)| *index != 1)
            .flat_map(|(_, chunk)| chunk.to_vec())
            .collect();
        let mut checker = Checker::default();
        checker.update(&body);
        assert!(checker.first_mismatch().is_some());
    }
}
