//! The skipper: the end of an object or array found 64 bytes at a time. Quotes, backslashes and brackets
//! are classified for a whole block at once, string interiors masked out with a prefix XOR, and only the
//! remaining brackets visited, the types of the open containers held in a register. On x86_64 it uses
//! SSE2, PCLMULQDQ when the build enables it, and AVX2 when the running CPU has it (`std::arch`).

use std::hint::select_unpredictable;

use super::lex::{ONES, eq_mask, gather};
use super::{JsonError, MAX_DEPTH};

/// At the `{` or `[` at `start` (a value nested `depth` containers deep): the offset after the matching
/// bracket, checking bracket types and depth.
///
/// Works on 64-byte blocks: one pass classifies every byte of a block at once (quotes, backslashes,
/// brackets), string interiors are masked out with a prefix XOR over the unescaped quotes, and only the
/// brackets that remain are visited. A byte-at-a-time loop would instead take a mispredicted branch at
/// nearly every key and value, which dominates the cost of skipping a request.
#[inline(always)]
pub(super) fn skip_container(bytes: &[u8], start: usize, depth: usize) -> Result<usize, JsonError> {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = avx2::Avx2::detect() {
        return avx2.skip_blocks(bytes, start, depth);
    }
    skip_blocks_baseline(bytes, start, depth)
}

/// Which bytes of a 64-byte block are `"`, `\\`, or a bracket (`{`, `[`, `}`, `]`), one bit per byte.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockMasks {
    pub(super) quote: u64,
    pub(super) backslash: u64,
    pub(super) bracket: u64,
}

impl BlockMasks {
    #[inline(always)]
    pub(super) fn classify(block: &[u8; 64]) -> BlockMasks {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            sse2::classify(block)
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        {
            BlockMasks::classify_swar(block)
        }
    }

    /// Portable version: eight bytes per step, exact per-byte flags gathered into bits by a multiply.
    #[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
    #[inline(always)]
    pub(super) fn classify_swar(block: &[u8; 64]) -> BlockMasks {
        let mut m = BlockMasks::default();
        for (k, word) in block.as_chunks::<8>().0.iter().enumerate() {
            let w = u64::from_le_bytes(*word);
            // Setting bit 5 folds `[` onto `{` and `]` onto `}`, and no other byte onto either.
            let folded = w | (ONES * 0x20);
            let shift = 8 * k;
            m.quote |= gather(eq_mask(w, b'"')) << shift;
            m.backslash |= gather(eq_mask(w, b'\\')) << shift;
            m.bracket |= gather(eq_mask(folded, b'{') | eq_mask(folded, b'}')) << shift;
        }
        m
    }
}

/// SSE2 is part of the x86_64 baseline; 16 bytes per compare instead of 8.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use super::BlockMasks;
    use crate::engine::openrtb::json::lex::sse2::load;
    #[cfg(target_feature = "pclmulqdq")]
    use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_set_epi64x};
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};

    #[inline(always)]
    pub(super) fn classify(block: &[u8; 64]) -> BlockMasks {
        // SAFETY: this module is only compiled when the target has SSE2 (see the cfg above), so the CPU
        // running this code supports every instruction `classify_sse2` uses. It touches no raw pointers.
        unsafe { classify_sse2(block) }
    }

    #[cfg(target_feature = "pclmulqdq")]
    #[inline(always)]
    pub(super) fn prefix_xor(x: u64) -> u64 {
        // SAFETY: only compiled when the target has PCLMULQDQ (and SSE2), as for `classify`.
        unsafe { prefix_xor_clmul(x) }
    }

    /// A carry-less multiply by all ones: bit n of the product is the XOR of bits 0..=n of `x`.
    #[cfg(target_feature = "pclmulqdq")]
    #[target_feature(enable = "sse2,pclmulqdq")]
    #[inline]
    fn prefix_xor_clmul(x: u64) -> u64 {
        let product = _mm_clmulepi64_si128::<0>(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1));
        _mm_cvtsi128_si64(product) as u64
    }

    #[target_feature(enable = "sse2")]
    #[inline]
    fn classify_sse2(block: &[u8; 64]) -> BlockMasks {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let open = _mm_set1_epi8(b'{' as i8);
        let close = _mm_set1_epi8(b'}' as i8);
        let fold = _mm_set1_epi8(0x20);
        let mut m = BlockMasks::default();
        for (k, lane) in block.as_chunks::<16>().0.iter().enumerate() {
            let v = load(lane);
            // Setting bit 5 folds `[` onto `{` and `]` onto `}`, and no other byte onto either.
            let folded = _mm_or_si128(v, fold);
            let bracket = _mm_or_si128(_mm_cmpeq_epi8(folded, open), _mm_cmpeq_epi8(folded, close));
            let bits = |hits| u64::from(_mm_movemask_epi8(hits) as u16) << (16 * k);
            m.quote |= bits(_mm_cmpeq_epi8(v, quote));
            m.backslash |= bits(_mm_cmpeq_epi8(v, backslash));
            m.bracket |= bits(bracket);
        }
        m
    }
}

/// AVX2, when the CPU running the program has it (checked once per skipped container, a cached flag): 32
/// bytes per compare for the skipper's block classification.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{BlockMasks, Classifier, JsonError};
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set_epi64x,
        _mm256_set1_epi8,
    };

    /// Proof that the running CPU supports AVX2: only [`Avx2::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(in super::super) struct Avx2(());

    impl Avx2 {
        #[inline(always)]
        pub(in super::super) fn detect() -> Option<Avx2> {
            std::arch::is_x86_feature_detected!("avx2").then_some(Avx2(()))
        }

        /// [`super::skip_blocks`] compiled for AVX2.
        #[inline(always)]
        pub(in super::super) fn skip_blocks(
            self,
            bytes: &[u8],
            start: usize,
            depth: usize,
        ) -> Result<usize, JsonError> {
            // SAFETY: an `Avx2` exists only when the CPU supports AVX2 (see `detect`), which is all that
            // `skip_blocks_avx2` requires. It touches no raw pointers.
            unsafe { skip_blocks_avx2(self, bytes, start, depth) }
        }
    }

    impl Classifier for Avx2 {
        #[inline(always)]
        fn classify(self, block: &[u8; 64]) -> BlockMasks {
            // SAFETY: as for `skip_blocks`.
            unsafe { classify_avx2(block) }
        }
    }

    #[target_feature(enable = "avx2")]
    fn skip_blocks_avx2(
        avx2: Avx2,
        bytes: &[u8],
        start: usize,
        depth: usize,
    ) -> Result<usize, JsonError> {
        super::skip_blocks(avx2, bytes, start, depth)
    }

    /// Built from `u128`s so that no raw pointer is needed; compiles to one unaligned load (or a memory
    /// operand of the compare).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load(chunk: &[u8; 32]) -> __m256i {
        let (lo, hi) = chunk.split_at(16);
        let word = |half: &[u8]| {
            half.first_chunk::<16>()
                .map_or(0, |b| u128::from_le_bytes(*b))
        };
        let (lo, hi) = (word(lo), word(hi));
        _mm256_set_epi64x((hi >> 64) as i64, hi as i64, (lo >> 64) as i64, lo as i64)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn classify_avx2(block: &[u8; 64]) -> BlockMasks {
        let quote = _mm256_set1_epi8(b'"' as i8);
        let backslash = _mm256_set1_epi8(b'\\' as i8);
        let open = _mm256_set1_epi8(b'{' as i8);
        let close = _mm256_set1_epi8(b'}' as i8);
        let fold = _mm256_set1_epi8(0x20);
        let mut m = BlockMasks::default();
        for (k, lane) in block.as_chunks::<32>().0.iter().enumerate() {
            let v = load(lane);
            // Setting bit 5 folds `[` onto `{` and `]` onto `}`, and no other byte onto either.
            let folded = _mm256_or_si256(v, fold);
            let bracket = _mm256_or_si256(
                _mm256_cmpeq_epi8(folded, open),
                _mm256_cmpeq_epi8(folded, close),
            );
            let bits = |hits| u64::from(_mm256_movemask_epi8(hits) as u32) << (32 * k);
            m.quote |= bits(_mm256_cmpeq_epi8(v, quote));
            m.backslash |= bits(_mm256_cmpeq_epi8(v, backslash));
            m.bracket |= bits(bracket);
        }
        m
    }
}

/// Bytes escaped by a backslash: each backslash not itself escaped escapes the next byte. `carry` links
/// blocks: it says the first byte is escaped, and is set when the last byte is an escaping backslash.
#[inline(always)]
fn escaped_bytes(backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = 0;
    let mut pending = backslash;
    if std::mem::take(carry) {
        escaped = 1;
        pending &= !1;
    }
    while pending != 0 {
        let at = pending.trailing_zeros();
        if at == 63 {
            *carry = true;
            break;
        }
        escaped |= 2 << at;
        pending &= !(3 << at);
    }
    escaped
}

/// Bit n = XOR of bits 0..=n: between an opening quote (included) and its closing quote (excluded).
#[inline(always)]
pub(super) fn prefix_xor(x: u64) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "pclmulqdq"))]
    {
        sse2::prefix_xor(x)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "pclmulqdq")))]
    {
        prefix_xor_shifts(x)
    }
}

#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "pclmulqdq"),
    allow(dead_code)
)]
#[inline(always)]
pub(super) fn prefix_xor_shifts(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Levels of nesting inside a skipped value whose types [`skip_blocks`] holds in a register (one bit of
/// the `u64` is the sentinel).
const REGISTER_LEVELS: u32 = 63;

/// The brackets of a 64-byte block that are outside strings. `in_string` (all ones when the previous block
/// ended inside a string) and `escape_carry` (the previous block ended with a backslash that escapes this
/// block's first byte) link the blocks.
#[inline(always)]
fn structural_brackets(masks: BlockMasks, in_string: &mut u64, escape_carry: &mut bool) -> u64 {
    let escaped = escaped_bytes(masks.backslash, escape_carry);
    let strings = prefix_xor(masks.quote & !escaped) ^ *in_string;
    *in_string = ((strings as i64) >> 63) as u64;
    masks.bracket & !strings
}

/// The last, short block of the input, padded with spaces, which are inert in every mask.
fn padded_tail(bytes: &[u8], base: usize) -> [u8; 64] {
    let rest = bytes.get(base..).unwrap_or_default();
    let mut padded = [b' '; 64];
    if let Some(head) = padded.get_mut(..rest.len()) {
        head.copy_from_slice(rest);
    }
    padded
}

/// What [`skip_blocks`] carries from one block to the next.
#[derive(Clone, Copy)]
struct SkipState {
    /// The types of the open containers inside the skipped value (the value itself included), as a shift
    /// register under a sentinel bit: bit 0 is the innermost container, bit n the one n levels out (set: an
    /// object, clear: an array), and the highest set bit marks the bottom, so `1` means none is open.
    stack: u64,
    in_string: u64,
    escape_carry: bool,
}

/// The loop of [`skip_container`] from the `{` or `[` at `start`: the offset after the matching
/// bracket, checking bracket types and depth (the value is at nesting `depth`). Inlined into each
/// classifier's entry point, so that the classifier inlines into the loop.
///
/// Every local here lives in a register: the bracket loop is the hot part of skipping, and a memory-held
/// stack would serialise every bracket on a store and a load.
#[inline(always)]
pub(super) fn skip_blocks<C: Classifier>(
    classifier: C,
    bytes: &[u8],
    start: usize,
    depth: usize,
) -> Result<usize, JsonError> {
    // The most levels the depth limit allows inside the value, and the `stack` values from which the
    // bracket loop leaves its fast path: past that limit, or past what the register holds.
    let limit = MAX_DEPTH.saturating_sub(depth);
    let stack_limit: u64 = 1 << (limit + 1).min(REGISTER_LEVELS as usize);
    let mut state = SkipState {
        stack: 1,
        in_string: 0,
        escape_carry: false,
    };
    let mut base = start;
    while let Some(block) = bytes.get(base..).and_then(<[u8]>::first_chunk::<64>) {
        if let Some(end) = skip_block(
            classifier.classify(block),
            block,
            base,
            &mut state,
            stack_limit,
        )? {
            return end.finish(bytes, limit);
        }
        base += 64;
    }
    if base < bytes.len() {
        let rest = bytes.get(base..).unwrap_or_default();
        // The input's last 64 bytes, classified and shifted down so that bit 0 is `base`: the bits past
        // the end come in as zeros, as the spaces of a padded copy would. A copy to a padded buffer costs
        // a memcpy and a store-forwarding stall, on the last value of nearly every request.
        let end = match bytes
            .len()
            .checked_sub(64)
            .and_then(|from| bytes.get(from..))
            .and_then(<[u8]>::first_chunk::<64>)
        {
            Some(window) => {
                let shift = 64 - rest.len();
                let m = classifier.classify(window);
                let masks = BlockMasks {
                    quote: m.quote >> shift,
                    backslash: m.backslash >> shift,
                    bracket: m.bracket >> shift,
                };
                skip_block(masks, rest, base, &mut state, stack_limit)?
            }
            None => {
                let block = padded_tail(bytes, base);
                skip_block(
                    classifier.classify(&block),
                    &block,
                    base,
                    &mut state,
                    stack_limit,
                )?
            }
        };
        if let Some(end) = end {
            return end.finish(bytes, limit);
        }
    }
    Err(JsonError::Truncated)
}

/// How [`skip_block`] left the fast path.
enum BlockEnd {
    /// The value ends before this offset.
    End(usize),
    /// Too deep for the register: go on from the brackets still to visit in the block at `base`.
    Deep {
        state: SkipState,
        brackets: u64,
        base: usize,
    },
}

impl BlockEnd {
    #[inline(always)]
    fn finish(self, bytes: &[u8], limit: usize) -> Result<usize, JsonError> {
        match self {
            BlockEnd::End(end) => Ok(end),
            BlockEnd::Deep {
                state,
                brackets,
                base,
            } => skip_deep(bytes, state, brackets, base, limit),
        }
    }
}

/// The brackets of one block; `Some` when the value ends in it or when the nesting outgrows the register.
#[inline(always)]
fn skip_block(
    masks: BlockMasks,
    block: &[u8],
    base: usize,
    state: &mut SkipState,
    stack_limit: u64,
) -> Result<Option<BlockEnd>, JsonError> {
    let mut brackets = structural_brackets(masks, &mut state.in_string, &mut state.escape_carry);
    let mut stack = state.stack;
    while brackets != 0 {
        let at = brackets.trailing_zeros() as usize;
        brackets &= brackets - 1;
        let byte = block.get(at).copied().unwrap_or_default();
        // `{` 0x7B and `[` 0x5B have bit 1 set, `}` 0x7D and `]` 0x5D do not; bit 5 tells curly from
        // square. Opening and closing are then handled arithmetically: which one comes next is data, and
        // a branch on it would mispredict about half the time.
        let open = (byte >> 1) & 1 == 1;
        let curly = u64::from((byte >> 5) & 1);
        // A closing bracket must match the innermost type (bit 0): a mismatch empties the register, which
        // no bracket can do otherwise (the value ends at `stack == 1`), so that the one check below
        // catches it too. An opening bracket pushes its type. Both selects must stay conditional moves
        // (hence `select_unpredictable`): the type test is data for an opening bracket too, and as a
        // branch the compiler would make of it, it mispredicts as often as the open/close one.
        let popped = select_unpredictable((stack ^ curly) & 1 == 0, stack >> 1, 0);
        stack = select_unpredictable(open, (stack << 1) | curly, popped);
        // One rarely taken branch for: the mismatch (`stack == 0`) and the end of the value (`stack ==
        // 1`), which both wrap below, and the depth limits (`stack >= stack_limit`).
        if stack.wrapping_sub(2) >= stack_limit - 2 {
            if stack == 0 {
                return Err(JsonError::Malformed {
                    offset: base + at,
                    reason: "mismatched bracket",
                });
            }
            if stack == 1 {
                return Ok(Some(BlockEnd::End(base + at + 1)));
            }
            // Past the depth limit, or the register is full (`skip_deep` tells which).
            state.stack = stack;
            return Ok(Some(BlockEnd::Deep {
                state: *state,
                brackets,
                base,
            }));
        }
    }
    state.stack = stack;
    Ok(None)
}

/// [`skip_blocks`] once the nesting outgrows the register or the depth limit (nesting bombs and
/// pathological requests only): the same walk with the types in memory, one bracket at a time, from the
/// remaining `brackets` of the block at `base` to the end of the value.
#[cold]
#[inline(never)]
fn skip_deep(
    bytes: &[u8],
    mut state: SkipState,
    mut brackets: u64,
    mut base: usize,
    limit: usize,
) -> Result<usize, JsonError> {
    let mut level = (63 - state.stack.leading_zeros()) as usize;
    if level > limit {
        return Err(JsonError::TooDeep);
    }
    // Bit n: the type of the container at level n + 1 (set: an object).
    let mut types = [0u64; MAX_DEPTH / 64];
    for slot in 0..level {
        if let Some(word) = types.get_mut(slot / 64) {
            *word |= ((state.stack >> (level - 1 - slot)) & 1) << (slot % 64);
        }
    }
    loop {
        let block = match bytes.get(base..).and_then(<[u8]>::first_chunk::<64>) {
            Some(block) => *block,
            None => padded_tail(bytes, base),
        };
        while brackets != 0 {
            let at = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            let byte = block.get(at).copied().unwrap_or_default();
            let curly = u64::from((byte >> 5) & 1);
            if (byte >> 1) & 1 == 1 {
                if level + 1 > limit {
                    return Err(JsonError::TooDeep);
                }
                let word = types.get_mut(level / 64).ok_or(JsonError::TooDeep)?;
                *word = (*word & !(1 << (level % 64))) | (curly << (level % 64));
                level += 1;
            } else {
                let slot = level - 1;
                let word = types.get(slot / 64).copied().unwrap_or_default();
                if (word >> (slot % 64)) & 1 != curly {
                    return Err(JsonError::Malformed {
                        offset: base + at,
                        reason: "mismatched bracket",
                    });
                }
                level = slot;
                if level == 0 {
                    return Ok(base + at + 1);
                }
            }
        }
        base += 64;
        if base >= bytes.len() {
            return Err(JsonError::Truncated);
        }
        let next = match bytes.get(base..).and_then(<[u8]>::first_chunk::<64>) {
            Some(block) => *block,
            None => padded_tail(bytes, base),
        };
        brackets = structural_brackets(
            BlockMasks::classify(&next),
            &mut state.in_string,
            &mut state.escape_carry,
        );
    }
}

/// How a 64-byte block is classified: the target's baseline ([`BlockMasks::classify`]), or a wider
/// instruction set found at run time.
pub(super) trait Classifier: Copy {
    fn classify(self, block: &[u8; 64]) -> BlockMasks;
}

#[derive(Clone, Copy)]
pub(super) struct BaselineClassifier;

impl Classifier for BaselineClassifier {
    #[inline(always)]
    fn classify(self, block: &[u8; 64]) -> BlockMasks {
        BlockMasks::classify(block)
    }
}

/// [`skip_blocks`] with the baseline classifier, out of line.
#[inline(never)]
fn skip_blocks_baseline(bytes: &[u8], start: usize, depth: usize) -> Result<usize, JsonError> {
    skip_blocks(BaselineClassifier, bytes, start, depth)
}
