//! The shard's key entries: a vector in fixed-size chunks.
//!
//! A `Vec` that grows by doubling copies all of its entries at each growth and holds
//! both copies meanwhile: with millions of keys of about 200 bytes that is a spike of
//! gigabytes, and a long stall, at an arbitrary record. Chunks are allocated once and
//! never move, so memory grows by one chunk at a time. Indexing costs one more load
//! (the chunk table is small and stays in cache).

use std::ops::{Index, IndexMut};

/// Entries per chunk: a power of two.
const CHUNK_SHIFT: u32 = 14;
const CHUNK: usize = 1 << CHUNK_SHIFT;

/// A growable list of `T` in chunks of [`CHUNK`] that never move.
pub(super) struct Slab<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub(super) fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks
            .last_mut()
            .expect("a chunk with room")
            .push(value);
        self.len += 1;
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i >> CHUNK_SHIFT)?.get(i & (CHUNK - 1))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }
}

impl<T> Index<usize> for Slab<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        assert!(i < self.len, "entry {i} of {}", self.len);
        // SAFETY: every chunk but the last is full and the last holds the rest, so for
        // i < len chunk `i >> CHUNK_SHIFT` exists and holds entry `i & (CHUNK - 1)`.
        unsafe {
            self.chunks
                .get_unchecked(i >> CHUNK_SHIFT)
                .get_unchecked(i & (CHUNK - 1))
        }
    }
}

impl<T> IndexMut<usize> for Slab<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        assert!(i < self.len, "entry {i} of {}", self.len);
        // SAFETY: as in `index`.
        unsafe {
            self.chunks
                .get_unchecked_mut(i >> CHUNK_SHIFT)
                .get_unchecked_mut(i & (CHUNK - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_across_chunks_and_never_moves_an_entry() {
        let mut s = Slab::new();
        assert!(s.is_empty());
        s.push(0usize);
        let first: *const usize = &s[0];
        for i in 1..3 * CHUNK + 5 {
            s.push(i);
        }
        assert_eq!(s.len(), 3 * CHUNK + 5);
        assert!(std::ptr::eq(first, &s[0]), "entries never move");
        for i in [0, CHUNK - 1, CHUNK, 2 * CHUNK + 1, 3 * CHUNK + 4] {
            assert_eq!(s[i], i);
            assert_eq!(s.get(i), Some(&i));
        }
        assert_eq!(s.get(3 * CHUNK + 5), None);
        s[CHUNK] = 7;
        assert_eq!(s[CHUNK], 7);
        for v in s.iter_mut() {
            *v += 1;
        }
        assert_eq!((s[0], s[3 * CHUNK + 4]), (1, 3 * CHUNK + 5));
    }
}
