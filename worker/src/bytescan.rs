//! Word-at-a-time (SWAR) scans of short JSON strings, for the exact readers (`extract`,
//! `account`). Most strings in a request or a usage object are keys and short values:
//! reading them 8 bytes at a time costs a fraction of a byte loop, and less than a
//! memchr call, whose set-up outweighs the bytes. Long strings are left to memchr.
//!
//! The masks are exact where they are used: `eq_mask` may flag a byte *after* a true
//! match (a borrow runs towards the more significant bytes, which come later in
//! memory), never before one, so its lowest flag is the first match; and a byte before
//! that match is flagged by the control/non-ASCII mask only if some byte before it
//! truly is one.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `w` equal to `b` (and possibly of later bytes).
#[inline(always)]
fn eq_mask(w: u64, b: u8) -> u64 {
    let x = w ^ (LO * u64::from(b));
    x.wrapping_sub(LO) & !x & HI
}

/// The index of the first `"` or `\` in `s[from..]`, looked for in 8-byte words up to
/// `window` bytes past `from`, and whether a byte before it is a control character or
/// not ASCII. `None`: not found within the window, or fewer than 8 bytes remain; the
/// caller's general path decides then.
#[inline]
pub fn quote_or_backslash(s: &[u8], from: usize, window: usize) -> Option<(usize, bool)> {
    let mut i = from;
    let limit = from.saturating_add(window);
    let mut low = 0u64;
    while i < limit {
        let w = u64::from_le_bytes(*s.get(i..)?.first_chunk::<8>()?);
        let stop = eq_mask(w, b'"') | eq_mask(w, b'\\');
        // Bytes below 0x20 borrow into their high bit; bytes from 0x80 have it set.
        let l = (w.wrapping_sub(LO * 0x20) | w) & HI;
        if stop != 0 {
            // `bit` is the high bit of the first stop byte: 8 * index + 7.
            let bit = stop.trailing_zeros();
            let before = (1u64 << (bit - 7)) - 1;
            return Some((i + (bit / 8) as usize, (low | (l & before)) != 0));
        }
        low |= l;
        i += 8;
    }
    None
}

/// Whether `s` holds the byte `b`, read 8 bytes at a time (for short slices, where a
/// memchr call costs more than the bytes). A last partial word is read as the slice's
/// last 8 bytes (some read twice, which changes no answer), and a slice shorter than a
/// word byte by byte: copying a partial word into a padded one was a memcpy call.
#[inline]
pub fn has_byte(s: &[u8], b: u8) -> bool {
    let Some(last) = s.last_chunk::<8>() else {
        return s.contains(&b);
    };
    let mut words = s.chunks_exact(8);
    let mut acc = 0u64;
    for c in words.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        acc |= eq_mask(u64::from_le_bytes(w), b);
    }
    if !words.remainder().is_empty() {
        acc |= eq_mask(u64::from_le_bytes(*last), b);
    }
    acc != 0
}

/// Whether every byte of `v` is printable ASCII (`0x21..=0x7E`) other than `"`, `=` and
/// `\\`: a value that an access line can carry unquoted. 8 bytes at a time; a last
/// partial word is read as the value's last 8 bytes, a value shorter than a word byte by
/// byte (as in [`has_byte`]).
#[inline]
pub fn plain_token(v: &[u8]) -> bool {
    let mut words = v.chunks_exact(8);
    let bad = |w: u64| {
        // Below 0x21 borrows into the high bit; from 0x80 has it; then DEL and the three.
        ((w.wrapping_sub(LO * 0x21) | w) & HI)
            | eq_mask(w, 0x7f)
            | eq_mask(w, b'"')
            | eq_mask(w, b'=')
            | eq_mask(w, b'\\')
    };
    let Some(last) = v.last_chunk::<8>() else {
        return v
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    };
    let mut acc = 0u64;
    for c in words.by_ref() {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        acc |= bad(u64::from_le_bytes(b));
    }
    if !words.remainder().is_empty() {
        acc |= bad(u64::from_le_bytes(*last));
    }
    acc == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(s: &[u8], from: usize) -> Option<(usize, bool)> {
        let end = (from..s.len()).find(|&j| s[j] == b'"' || s[j] == b'\\')?;
        Some((end, s[from..end].iter().any(|&c| !(0x20..0x80).contains(&c))))
    }

    proptest! {
        #[test]
        fn finds_what_a_byte_loop_finds(
            s in prop::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), Just(0x1fu8), Just(0x20u8), Just(0x7fu8), Just(0x80u8),
                Just(0xffu8), Just(b'a'), any::<u8>()
            ], 0..80),
            from in 0usize..12,
        ) {
            let from = from.min(s.len());
            match quote_or_backslash(&s, from, 64) {
                // Found: it is the first stop byte, and the flag is exact.
                Some((end, low)) => {
                    let want = reference(&s, from);
                    prop_assert_eq!(Some((end, low)), want);
                    // The word holding it was read whole.
                    prop_assert!(from + (end - from) / 8 * 8 + 8 <= s.len());
                }
                // Not found: no stop byte within the words it could read.
                None => {
                    let words = ((s.len() - from) / 8).min(8);
                    let read = &s[from..from + words * 8];
                    prop_assert!(!read.iter().any(|&c| c == b'"' || c == b'\\'));
                }
            }
        }
    }

    #[test]
    fn examples() {
        assert_eq!(quote_or_backslash(b"model\":\"x\"}", 0, 64), Some((5, false)));
        assert_eq!(quote_or_backslash(b"\"abcdefgh", 0, 64), Some((0, false)));
        assert_eq!(quote_or_backslash(b"ab\x01cd\"efgh", 0, 64), Some((5, true)));
        assert_eq!(quote_or_backslash(b"ab\xc3\xa9d\\efgh", 0, 64), Some((5, true)));
        // A bad byte after the stop does not count.
        assert_eq!(quote_or_backslash(b"abcd\"\x01\x80gh", 0, 64), Some((4, false)));
        // Fewer than 8 bytes: the caller's path.
        assert_eq!(quote_or_backslash(b"ab\"", 0, 64), None);
        // Beyond the window: the caller's path.
        assert_eq!(quote_or_backslash(&[b'a'; 100], 0, 64), None);
    }

    proptest! {
        #[test]
        fn plain_token_is_the_byte_rule(v in prop::collection::vec(prop_oneof![
            Just(b'"'), Just(b'='), Just(b'\\'), Just(0x20u8), Just(0x21u8), Just(0x7eu8),
            Just(0x7fu8), Just(0x80u8), Just(b'a'), any::<u8>()
        ], 0..40)) {
            let want = v.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
            prop_assert_eq!(plain_token(&v), want);
        }
    }

    proptest! {
        #[test]
        fn has_byte_is_contains(v in prop::collection::vec(prop_oneof![Just(b'\\'), Just(0x5du8), Just(0x5bu8), Just(0u8), any::<u8>()], 0..40)) {
            prop_assert_eq!(has_byte(&v, b'\\'), v.contains(&b'\\'));
        }
    }
}
