//! Where the lines of a head end, a block of bytes at a time.
//!
//! A response head is read line by line (`head::scan_response`), and most of its lines are
//! skipped after one look at their first byte, so finding the line ends is most of the work.
//! `memchr` per line paid its set-up on every one of a head's ~10 short lines; one pass that
//! marks every `\n` of a block at once, then hands out the marks, costs a few instructions per
//! block: 16 bytes with SSE2 (part of every x86-64), 8 elsewhere, word-wide arithmetic.

use std::ops::ControlFlow;

/// Calls `each` with the position of every `\n` of `buf`, in order, until it returns
/// `Break`. Internal iteration: the block and its marks stay in registers, where an iterator
/// kept them in memory between calls. For nginx's 250-byte response head this is ~320
/// instructions, the per-line work aside.
pub(super) fn line_ends<T>(buf: &[u8], mut each: impl FnMut(usize) -> ControlFlow<T>) -> Option<T> {
    let mut blocks = buf.chunks_exact(BLOCK);
    let mut at = 0;
    for block in &mut blocks {
        let block: &[u8; BLOCK] = block.try_into().unwrap_or(&[0; BLOCK]);
        if let Some(t) = marked(at, newlines(block), &mut each) {
            return Some(t);
        }
        at += BLOCK;
    }
    // The last bytes, zero-padded (a zero byte is no `\n`).
    let rest = blocks.remainder();
    let mut block = [0u8; BLOCK];
    block[..rest.len()].copy_from_slice(rest);
    marked(at, newlines(&block), &mut each)
}

/// Calls `each` for the `\n`s `marks` shows (bit `i`: byte `i`) in the block at `at`.
#[inline(always)]
fn marked<T>(
    at: usize,
    mut marks: u32,
    each: &mut impl FnMut(usize) -> ControlFlow<T>,
) -> Option<T> {
    while marks != 0 {
        if let ControlFlow::Break(t) = each(at + marks.trailing_zeros() as usize) {
            return Some(t);
        }
        marks &= marks - 1;
    }
    None
}

#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 16;

/// Bit `i` set where byte `i` of `block` is `\n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn newlines(block: &[u8; BLOCK]) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    // SAFETY: SSE2 is in the x86-64 baseline, and the unaligned load reads the 16 bytes of
    // `block`.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast());
        _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\n' as i8))) as u32
    }
}

#[cfg(not(target_arch = "x86_64"))]
const BLOCK: usize = 8;

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn newlines(block: &[u8; BLOCK]) -> u32 {
    newlines_in_word(u64::from_le_bytes(*block))
}

/// Bit `i` set where byte `i` of `word` (little-endian) is `\n`, in word-wide arithmetic.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn newlines_in_word(word: u64) -> u32 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ 0x0a0a_0a0a_0a0a_0a0a;
    // Bit 7 of a byte of `seen` is set unless that byte of `x` is zero, that is, a `\n`. Exact:
    // no carry crosses a byte, as `(b & 0x7f) + 0x7f` is at most `0xfe`.
    let seen = ((x & LOW7) + LOW7) | x;
    let high_bits = !seen & !LOW7;
    // Gathers bit 7 of each byte into the top byte, byte `i`'s into bit `56 + i`.
    ((high_bits >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_line_end_and_nothing_else() {
        // Every byte value around the `\n`s, and tails of every length.
        let mut buf: Vec<u8> = (0..=255u8).collect();
        buf.extend_from_slice(b"\n\n\x0b\n\x8a\x0a\x09\n");
        for end in 0..=buf.len() {
            let want: Vec<usize> = (0..end).filter(|&i| buf[i] == b'\n').collect();
            let mut got = Vec::new();
            let none = line_ends(&buf[..end], |i| {
                got.push(i);
                ControlFlow::<()>::Continue(())
            });
            assert_eq!((none, got), (None, want.clone()), "{end}");
            // Stopped at the first.
            assert_eq!(
                line_ends(&buf[..end], ControlFlow::Break),
                want.first().copied()
            );
        }
    }

    /// The word-wide marks, which x86-64 builds do not use, mark what the bytes say.
    #[test]
    fn word_marks_are_exact() {
        let mut buf: Vec<u8> = (0..=255u8).collect();
        buf.extend_from_slice(b"\n\n\x0b\n\x8a\x0a\x09\n\n\x0a");
        for word in buf.windows(8) {
            let want = (0..8)
                .filter(|&i| word[i] == b'\n')
                .fold(0, |m, i| m | 1 << i);
            let got = newlines_in_word(u64::from_le_bytes(word.try_into().unwrap()));
            assert_eq!(got, want, "{word:?}");
        }
    }
}
