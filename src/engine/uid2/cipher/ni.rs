//! AES-256-GCM opening of token-sized blobs with AES-NI and CLMUL, for [`super::Secret`]. Pure; depends
//! on `core::arch` and bytemuck (safe casts between byte arrays and SIMD registers).
//!
//! # Why not the `aes` and `ghash` crates
//! A token layer is 5 to 9 blocks, and both crates are built for long messages: `aes` runs blocks
//! through its generic in/out buffer machinery, `ghash` clones and finalises a `polyval` state with a
//! byte reversal per block. For a v4 token those wrappers cost more instructions than the AES rounds and
//! the carry-less multiplications themselves (callgrind). Here the round keys and the hash key's first
//! sixteen powers are kept in registers-ready form per key, and each block count (0 to 15) has its own
//! instance of the open, so every array has a size known at compile time: the blocks stay in registers,
//! the counter blocks go through AES together with the rounds interleaved, and GHASH multiplies each
//! block by its own power of `H` and reduces once per open (Intel, "Carry-Less Multiplication and Its
//! Usage for Computing the GCM Mode", 2014, algorithms 1 and 5, bit-reflected form). Blocks are read
//! and written as 16 whole bytes, the last partial one too, which the tag after it makes possible: no
//! variable-length copies.
//!
//! Correctness rests on `cipher::tests::gcm_open_matches_aes_gcm` and `ni_matches_the_aes_crate`, which
//! compare this path with `aes-gcm` and `aes` on random keys, nonces, lengths and tamperings, and on the
//! SDK interop tests.

use core::arch::x86_64::{
    __m128i, _mm_aesenc_si128, _mm_aesenclast_si128, _mm_aeskeygenassist_si128, _mm_and_si128,
    _mm_clmulepi64_si128, _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_setzero_si128,
    _mm_shuffle_epi8, _mm_shuffle_epi32, _mm_slli_epi32, _mm_slli_si128, _mm_srli_epi32,
    _mm_srli_si128, _mm_xor_si128,
};

use super::{BLOCK_LEN, CryptoError, GCM_NONCE_LEN, GCM_TAG_LEN, SHORT_GCM_BLOCKS};

/// Keeps the 12 nonce bytes of a 16-byte load.
const NONCE_MASK: [u8; BLOCK_LEN] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
];

/// The 16 bytes at `16 - n` keep the first `n` bytes of a block.
const LAST_BLOCK_MASKS: [u8; 2 * BLOCK_LEN] = {
    let mut masks = [0u8; 2 * BLOCK_LEN];
    let mut index = 0;
    while index < BLOCK_LEN {
        masks[index] = 0xff;
        index += 1;
    }
    masks
};

/// The most blocks GHASH takes in one open: the ciphertext's and the length block.
const MAX_HASHED: usize = SHORT_GCM_BLOCKS + 1;

/// Round keys of AES-256 and the GHASH key `H = E(0^128)` with its powers, prepared once per key.
#[derive(Clone, Copy)]
pub(super) struct ShortGcm {
    round_keys: [__m128i; 15],
    /// `H`, `H^2`, …, `H^16`, byte-reversed (the bit-reflected form the multiplication works in): every
    /// block of an open has its own power, so the whole hash takes one reduction.
    hash_powers: [__m128i; MAX_HASHED],
    /// Each power's two halves XORed together, in the low half: the second factor of the middle
    /// product in Karatsuba's form (see [`Product::accumulate`]).
    hash_power_folds: [__m128i; MAX_HASHED],
}

impl ShortGcm {
    /// `None` when the CPU lacks AES-NI, CLMUL or SSSE3; the caller then opens through `aes-gcm`.
    pub(super) fn new(key: &[u8; 32]) -> Option<ShortGcm> {
        if !(std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("ssse3"))
        {
            return None;
        }
        // SAFETY: `prepare` needs exactly the features detected above.
        Some(unsafe { ShortGcm::prepare(key) })
    }

    /// Opens `blob`, `nonce || ciphertext || tag` with a ciphertext of at most [`SHORT_GCM_BLOCKS`]
    /// blocks, in place if the tag authenticates it, and returns the plaintext's length (it starts
    /// right after the nonce). On failure the blob is left as it was.
    pub(super) fn open(&self, blob: &mut [u8]) -> Result<usize, CryptoError> {
        // SAFETY: a `ShortGcm` exists only after `new` detected the features `open_with` needs.
        unsafe { self.open_with(blob) }
    }

    #[target_feature(enable = "aes,pclmulqdq,ssse3")]
    fn prepare(key: &[u8; 32]) -> ShortGcm {
        let round_keys = expand_key(key);
        let mut zero = [_mm_setzero_si128()];
        encrypt_group(&round_keys, &mut zero);
        let h = reverse(zero[0]);
        let mut hash_powers = [h; MAX_HASHED];
        for index in 1..MAX_HASHED {
            hash_powers[index] = multiply(hash_powers[index - 1], h);
        }
        ShortGcm {
            round_keys,
            hash_powers,
            hash_power_folds: hash_powers.map(|power| fold_halves(power)),
        }
    }

    #[target_feature(enable = "aes,pclmulqdq,ssse3")]
    fn open_with(&self, blob: &mut [u8]) -> Result<usize, CryptoError> {
        let ciphertext_len = blob
            .len()
            .checked_sub(GCM_NONCE_LEN + GCM_TAG_LEN)
            .ok_or(CryptoError)?;
        // One instance per block count, so every array below has a size known at compile time: the
        // blocks then stay in registers and every loop is unrolled. As loops over slices, the blocks
        // went through stack arrays and each step paid for loop control and bounds checks.
        macro_rules! by_block_count {
            ($($blocks:literal => $hashed:literal),*) => {
                match ciphertext_len.div_ceil(BLOCK_LEN) {
                    $($blocks => self.open_blocks::<$blocks, $hashed>(blob, ciphertext_len),)*
                    _ => Err(CryptoError),
                }
            };
        }
        const _: () = assert!(SHORT_GCM_BLOCKS == 15, "by_block_count lists 0..=15 blocks");
        by_block_count!(0 => 1, 1 => 2, 2 => 3, 3 => 4, 4 => 5, 5 => 6, 6 => 7, 7 => 8, 8 => 9,
            9 => 10, 10 => 11, 11 => 12, 12 => 13, 13 => 14, 14 => 15, 15 => 16)?;
        Ok(ciphertext_len)
    }

    /// [`Self::open_with`] for a ciphertext of `BLOCKS` blocks, the last one possibly partial;
    /// `HASHED` is `BLOCKS + 1`: the ciphertext blocks and the length block.
    ///
    /// Every block is read and written as 16 whole bytes, the partial one too: the tag follows the
    /// ciphertext, so those 16 bytes are always inside the blob, and the bytes past the ciphertext are
    /// masked off when hashing and written back unchanged.
    #[target_feature(enable = "aes,pclmulqdq,ssse3")]
    fn open_blocks<const BLOCKS: usize, const HASHED: usize>(
        &self,
        blob: &mut [u8],
        ciphertext_len: usize,
    ) -> Result<(), CryptoError> {
        // The 16 bytes from the nonce's start (its 12 and the ciphertext's first 4), the ciphertext as
        // `BLOCKS` whole blocks (the last one running into the tag when it is partial), and the tag,
        // each checked once so that every access below has an index known at compile time.
        let nonce: [u8; BLOCK_LEN] = *blob.first_chunk().ok_or(CryptoError)?;
        let nonce = _mm_and_si128(bytemuck::cast(nonce), bytemuck::cast(NONCE_MASK));
        let tag: [u8; GCM_TAG_LEN] = *blob.last_chunk().ok_or(CryptoError)?;
        let body = blob.get_mut(GCM_NONCE_LEN..).ok_or(CryptoError)?;
        let body: &mut [[u8; BLOCK_LEN]; BLOCKS] = body
            .as_chunks_mut()
            .0
            .first_chunk_mut()
            .ok_or(CryptoError)?;
        // The bytes of the last block that belong to the ciphertext (1..=16; 16 when it is whole).
        let last_len = ciphertext_len + BLOCK_LEN - BLOCKS * BLOCK_LEN;
        let last_mask: [u8; BLOCK_LEN] = *LAST_BLOCK_MASKS
            .get(BLOCK_LEN - last_len.min(BLOCK_LEN)..)
            .and_then(<[u8]>::first_chunk)
            .ok_or(CryptoError)?;
        let last_mask: __m128i = bytemuck::cast(last_mask);
        let blocks: [__m128i; BLOCKS] = body.map(bytemuck::cast);

        // GHASH input: the ciphertext blocks (the last zero-padded) and the length block
        // `[len(A)]64 || [len(C)]64`, no associated data.
        let ciphertext_bits = (ciphertext_len as u64) * 8;
        let mut hashed = [bytemuck::cast([0, ciphertext_bits.to_be()]); HASHED];
        for (slot, block) in hashed.iter_mut().zip(&blocks) {
            *slot = *block;
        }
        if let Some(last) = BLOCKS.checked_sub(1) {
            hashed[last] = _mm_and_si128(hashed[last], last_mask);
        }
        let digest = self.ghash(&hashed.map(|block| reverse(block)));

        // Block 0 is J0 = nonce || 1, the tag mask; blocks 1.. are the keystream from inc32(J0). The
        // count never exceeds 16, so it only ever occupies the counter's last byte.
        let mut stream = [nonce; HASHED];
        for (count, block) in (1u128..).zip(stream.iter_mut()) {
            *block = _mm_or_si128(*block, bytemuck::cast(count << 120));
        }
        encrypt_group(&self.round_keys, &mut stream);

        // Compared in constant time: one byte-wise comparison of the whole tag, then its mask.
        let expected = _mm_xor_si128(reverse(digest), stream[0]);
        if _mm_movemask_epi8(_mm_cmpeq_epi8(expected, bytemuck::cast(tag))) != 0xffff {
            return Err(CryptoError);
        }
        for (index, (block, keystream)) in blocks.iter().zip(&stream[1..]).enumerate() {
            let keystream = if index + 1 == BLOCKS {
                _mm_and_si128(*keystream, last_mask)
            } else {
                *keystream
            };
            body[index] = bytemuck::cast(_mm_xor_si128(*block, keystream));
        }
        Ok(())
    }

    /// GHASH of already byte-reversed blocks, from a zero accumulator, in the reversed form:
    /// `X1·H^n + X2·H^(n-1) + … + Xn·H`, the products summed unreduced and reduced once. Horner's rule
    /// (`(X1·H + X2)·H …`) gives the same value but reduces after every block, one long dependent chain.
    #[target_feature(enable = "pclmulqdq,ssse3")]
    fn ghash<const N: usize>(&self, blocks: &[__m128i; N]) -> __m128i {
        const { assert!(N <= MAX_HASHED) };
        let mut product = Product::default();
        let powers = self.hash_powers[..N]
            .iter()
            .zip(&self.hash_power_folds[..N]);
        for (block, (power, power_fold)) in blocks.iter().zip(powers.rev()) {
            product.accumulate(*block, *power, *power_fold);
        }
        product.reduce()
    }
}

/// The encryption of each block of a fixed-size group, the blocks' rounds interleaved: one block's
/// rounds are a dependent chain, and AES-NI runs several chains at once. Past the registers, the round
/// keys are read from memory by the `AESENC`s themselves, which costs no extra instruction.
#[target_feature(enable = "aes")]
fn encrypt_group<const N: usize>(round_keys: &[__m128i; 15], group: &mut [__m128i; N]) {
    // Written out round by round: as a loop over the round keys it was not unrolled, and each round
    // paid for loop control and reloading the group.
    macro_rules! rounds {
        ($($round:literal)*) => {$(
            for block in group.iter_mut() {
                *block = _mm_aesenc_si128(*block, round_keys[$round]);
            }
        )*};
    }
    for block in group.iter_mut() {
        *block = _mm_xor_si128(*block, round_keys[0]);
    }
    rounds!(1 2 3 4 5 6 7 8 9 10 11 12 13);
    for block in group.iter_mut() {
        *block = _mm_aesenclast_si128(*block, round_keys[14]);
    }
}

/// The AES-256 key schedule (FIPS-197 §5.2) with `AESKEYGENASSIST`, as in Intel's AES-NI white paper.
#[target_feature(enable = "aes")]
fn expand_key(key: &[u8; 32]) -> [__m128i; 15] {
    /// The next even-numbered round key from the previous two.
    #[target_feature(enable = "aes")]
    fn even<const RCON: i32>(previous_even: __m128i, previous_odd: __m128i) -> __m128i {
        let assist = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<RCON>(previous_odd));
        _mm_xor_si128(spread(previous_even), assist)
    }
    /// The next odd-numbered round key from the previous odd one and the new even one.
    #[target_feature(enable = "aes")]
    fn odd(previous_odd: __m128i, even: __m128i) -> __m128i {
        let assist = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(even));
        _mm_xor_si128(spread(previous_odd), assist)
    }
    /// `w0, w0^w1, w0^w1^w2, w0^w1^w2^w3` of the four words.
    #[target_feature(enable = "aes")]
    fn spread(x: __m128i) -> __m128i {
        let x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        let x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        _mm_xor_si128(x, _mm_slli_si128::<4>(x))
    }

    let (low, high) = key.split_at(16);
    let mut keys = [_mm_setzero_si128(); 15];
    keys[0] = bytemuck::cast(<[u8; 16]>::try_from(low).unwrap_or_default());
    keys[1] = bytemuck::cast(<[u8; 16]>::try_from(high).unwrap_or_default());
    keys[2] = even::<0x01>(keys[0], keys[1]);
    keys[3] = odd(keys[1], keys[2]);
    keys[4] = even::<0x02>(keys[2], keys[3]);
    keys[5] = odd(keys[3], keys[4]);
    keys[6] = even::<0x04>(keys[4], keys[5]);
    keys[7] = odd(keys[5], keys[6]);
    keys[8] = even::<0x08>(keys[6], keys[7]);
    keys[9] = odd(keys[7], keys[8]);
    keys[10] = even::<0x10>(keys[8], keys[9]);
    keys[11] = odd(keys[9], keys[10]);
    keys[12] = even::<0x20>(keys[10], keys[11]);
    keys[13] = odd(keys[11], keys[12]);
    keys[14] = even::<0x40>(keys[12], keys[13]);
    keys
}

/// The 16 bytes in reverse order: GCM's bit order, as the carry-less multiplication wants it.
#[target_feature(enable = "ssse3")]
fn reverse(x: __m128i) -> __m128i {
    let order: __m128i = bytemuck::cast([15u8, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    _mm_shuffle_epi8(x, order)
}

/// The two 64-bit halves of `x` XORed, in the low half (the high half holds the same).
#[target_feature(enable = "sse2")]
fn fold_halves(x: __m128i) -> __m128i {
    _mm_xor_si128(x, _mm_shuffle_epi32::<0x4e>(x))
}

/// `a·b` in GF(2^128), bit-reflected form.
#[target_feature(enable = "pclmulqdq,ssse3")]
fn multiply(a: __m128i, b: __m128i) -> __m128i {
    let mut product = Product::default();
    product.accumulate(a, b, fold_halves(b));
    product.reduce()
}

/// A sum of unreduced 256-bit carry-less products, as low and high halves and Karatsuba's middle term
/// (the two cross terms plus low and high; [`Product::reduce`] takes those out).
#[derive(Clone, Copy)]
struct Product {
    low: __m128i,
    middle: __m128i,
    high: __m128i,
}

impl Default for Product {
    fn default() -> Product {
        let zero: __m128i = bytemuck::cast(0u128);
        Product {
            low: zero,
            middle: zero,
            high: zero,
        }
    }
}

impl Product {
    /// Adds `a·b` with three multiplications instead of four (Karatsuba): `middle` gets
    /// `(a1 ^ a0)·(b1 ^ b0)`, which is the two cross terms plus `a0·b0` and `a1·b1`, and [`Self::reduce`]
    /// takes those two out once for the whole sum. `b_fold` is [`fold_halves`] of `b`, prepared with
    /// the key for the hash powers. One CLMUL fewer a block is worth the shuffle and XOR added: the
    /// 130-byte open went from 82 to 77.5 ns (interleaved criterion runs).
    #[target_feature(enable = "pclmulqdq,sse2")]
    fn accumulate(&mut self, a: __m128i, b: __m128i, b_fold: __m128i) {
        self.low = _mm_xor_si128(self.low, _mm_clmulepi64_si128::<0x00>(a, b));
        self.high = _mm_xor_si128(self.high, _mm_clmulepi64_si128::<0x11>(a, b));
        let middle = _mm_clmulepi64_si128::<0x00>(fold_halves(a), b_fold);
        self.middle = _mm_xor_si128(self.middle, middle);
    }

    /// Takes `low` and `high` out of the Karatsuba middle term, shifts the 256-bit sum left by one bit
    /// (the reflected form's product is one bit short) and reduces it modulo
    /// `x^128 + x^7 + x^2 + x + 1` (Intel's white paper, algorithm 5).
    #[target_feature(enable = "sse2")]
    fn reduce(self) -> __m128i {
        let middle = _mm_xor_si128(self.middle, _mm_xor_si128(self.low, self.high));
        let low = _mm_xor_si128(self.low, _mm_slli_si128::<8>(middle));
        let high = _mm_xor_si128(self.high, _mm_srli_si128::<8>(middle));

        let low_carries = _mm_srli_epi32::<31>(low);
        let high_carries = _mm_srli_epi32::<31>(high);
        let low = _mm_or_si128(_mm_slli_epi32::<1>(low), _mm_slli_si128::<4>(low_carries));
        let high = _mm_or_si128(
            _mm_or_si128(_mm_slli_epi32::<1>(high), _mm_slli_si128::<4>(high_carries)),
            _mm_srli_si128::<12>(low_carries),
        );

        let left = _mm_xor_si128(
            _mm_xor_si128(_mm_slli_epi32::<31>(low), _mm_slli_epi32::<30>(low)),
            _mm_slli_epi32::<25>(low),
        );
        let carried = _mm_srli_si128::<4>(left);
        let low = _mm_xor_si128(low, _mm_slli_si128::<12>(left));
        let right = _mm_xor_si128(
            _mm_xor_si128(_mm_srli_epi32::<1>(low), _mm_srli_epi32::<2>(low)),
            _mm_xor_si128(_mm_srli_epi32::<7>(low), carried),
        );
        _mm_xor_si128(high, _mm_xor_si128(low, right))
    }
}

#[cfg(test)]
mod tests {
    use aes::cipher::{BlockEncrypt, KeyInit};

    use super::*;

    /// The key schedule and the grouped encryption against the `aes` crate, for several group sizes, and
    /// the hash key's powers against one another.
    #[test]
    fn ni_matches_the_aes_crate() {
        let mut rng = fastrand::Rng::with_seed(0x4e49);
        for _ in 0..200 {
            let key: [u8; 32] = std::array::from_fn(|_| rng.u8(..));
            let Some(short) = ShortGcm::new(&key) else {
                return; // no AES-NI: `Secret` never builds one, nothing to check
            };
            let reference = aes::Aes256::new(&key.into());
            let plain: [[u8; 16]; 16] =
                std::array::from_fn(|_| std::array::from_fn(|_| rng.u8(..)));
            let expected = plain.map(|input| {
                let mut block = aes::Block::from(input);
                reference.encrypt_block(&mut block);
                <[u8; 16]>::from(block)
            });
            // One block, an odd count (a v4 token's outer layer: 9) and the most an open takes.
            let mut one: [__m128i; 1] = [bytemuck::cast(plain[0])];
            let mut nine: [__m128i; 9] = std::array::from_fn(|i| bytemuck::cast(plain[i]));
            let mut sixteen: [__m128i; 16] = plain.map(bytemuck::cast);
            // SAFETY: `ShortGcm::new` returned Some, so the CPU has the features.
            unsafe {
                encrypt_group(&short.round_keys, &mut one);
                encrypt_group(&short.round_keys, &mut nine);
                encrypt_group(&short.round_keys, &mut sixteen);
            }
            let as_bytes = |block: &__m128i| bytemuck::cast::<__m128i, [u8; 16]>(*block);
            assert_eq!(one.map(|b| as_bytes(&b)), expected[..1]);
            assert_eq!(nine.map(|b| as_bytes(&b)), expected[..9]);
            assert_eq!(sixteen.map(|b| as_bytes(&b)), expected);
            // `H^i · H^j = H^(i+j)` for every pair within the table: the powers were built by
            // repeated multiplication, so this checks them along other paths.
            let powers = short.hash_powers;
            for (i, j) in (0..MAX_HASHED).flat_map(|i| (0..MAX_HASHED - i - 1).map(move |j| (i, j)))
            {
                // SAFETY: as above.
                let product = unsafe { multiply(powers[i], powers[j]) };
                assert_eq!(
                    bytemuck::cast::<__m128i, u128>(product),
                    bytemuck::cast::<__m128i, u128>(powers[i + j + 1]),
                    "H^{} · H^{}",
                    i + 1,
                    j + 1
                );
            }
        }
    }
}
