//! AES-256-GCM (v3/v4 tokens and the operator envelope) and AES-256-CBC with PKCS#7 (v2 tokens, via
//! `cbc`). A [`Secret`] holds the key schedules, built once per key when a key set is loaded rather than
//! once per token. Pure; depends on aes, aes-gcm, ghash, subtle and cbc.
//!
//! A GCM blob is always `nonce(12) || ciphertext || tag(16)` with no associated data (spec §1).
//!
//! # Why token-sized blobs are not opened by `aes-gcm`
//! A v4 token is two GCM layers of about 100 and 60 bytes, and opening them was two thirds of a token's
//! decryption. `aes-gcm` 0.10 hashes one block at a time (`polyval` 0.6, a full reduction per block) and
//! runs the counter mode through generic per-call machinery. [`Secret::gcm_open`] therefore composes the
//! same primitives itself for blobs of up to [`SHORT_GCM_BLOCKS`] blocks (NIST SP 800-38D §7.2, no AAD,
//! 96-bit nonce): all counter blocks and the tag mask `E(J0)` go through `aes` in one batch, so AES-NI
//! pipelines them, and the ciphertext and length block go through `ghash` 0.6 in one call, which folds
//! four blocks per reduction. The tag is compared in constant time before any plaintext is released.
//! Longer blobs (operator responses) and every seal go through `aes-gcm`, so the tests' seal/open round
//! trips check one implementation against the other, and `gcm_open_matches_aes_gcm` compares them
//! directly on random keys, nonces, lengths and tamperings. Measured side by side in one run by
//! `cargo bench --bench decrypt -- gcm_open` (README, Performance).

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use ghash::GHash;
use ghash::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;

pub const GCM_NONCE_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
pub const CBC_IV_LEN: usize = 16;

/// The longest ciphertext, in 16-byte blocks, that [`Secret::gcm_open`] opens on the stack rather than
/// through `aes-gcm`. Every token layer fits (a v4 outer layer is 7 blocks).
pub const SHORT_GCM_BLOCKS: usize = 15;
const BLOCK_LEN: usize = 16;
/// Blocks `ghash` 0.6 folds per reduction on x86-64.
const GHASH_BATCH: usize = 4;

/// Authentication or padding failed, or the blob is too short. Deliberately carries no detail: the
/// SDKs map every such failure to INVALID_PAYLOAD, and a reason would only be an oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoError;

/// A 32-byte key with its AES-GCM and AES-CBC schedules prepared.
#[derive(Clone)]
pub struct Secret {
    bytes: [u8; 32],
    gcm: Aes256Gcm,
    aes: Aes256,
    /// GHASH keyed with `H = E(0^128)`, its powers of H expanded once; cloned per open.
    ghash: GHash,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in debug output.
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn new(bytes: [u8; 32]) -> Self {
        let aes = Aes256::new(&bytes.into());
        let mut hash_key = aes::Block::default();
        aes.encrypt_block(&mut hash_key);
        let hash_key: [u8; BLOCK_LEN] = hash_key.into();
        Secret {
            bytes,
            gcm: Aes256Gcm::new(&bytes.into()),
            ghash: GHash::new(&hash_key.into()),
            aes,
        }
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Opens `nonce || ciphertext || tag` in place and returns the plaintext, a sub-slice of `blob`.
    pub fn gcm_open<'a>(&self, blob: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        if blob.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
            return Err(CryptoError);
        }
        let (nonce, rest) = blob.split_at_mut(GCM_NONCE_LEN);
        let (ciphertext, tag) = rest.split_at_mut(rest.len() - GCM_TAG_LEN);
        if ciphertext.len() > SHORT_GCM_BLOCKS * BLOCK_LEN {
            self.gcm
                .decrypt_in_place_detached(
                    Nonce::from_slice(nonce),
                    &[],
                    ciphertext,
                    Tag::from_slice(tag),
                )
                .map_err(|_| CryptoError)?;
            return Ok(ciphertext);
        }
        let blocks = ciphertext.len().div_ceil(BLOCK_LEN);

        // GHASH over the zero-padded ciphertext and the length block `[len(A)]64 || [len(C)]64`,
        // preceded by zero blocks up to a multiple of `ghash`'s 4-block batch: with the accumulator
        // starting at zero, leading zero blocks leave it at zero, and no block takes the slower
        // one-at-a-time path.
        const HASH_CAPACITY: usize = (SHORT_GCM_BLOCKS + 1).next_multiple_of(GHASH_BATCH);
        let hashed = (blocks + 1).next_multiple_of(GHASH_BATCH);
        let lead = hashed - (blocks + 1);
        let mut hash_input = [ghash::Block::default(); HASH_CAPACITY];
        for (block, chunk) in hash_input[lead..]
            .iter_mut()
            .zip(ciphertext.chunks(BLOCK_LEN))
        {
            block[..chunk.len()].copy_from_slice(chunk);
        }
        let ciphertext_bits = (ciphertext.len() as u64) * 8;
        hash_input[hashed - 1][8..].copy_from_slice(&ciphertext_bits.to_be_bytes());
        let mut ghash = self.ghash.clone();
        ghash.update(&hash_input[..hashed]);
        let digest = u128::from_ne_bytes(ghash.finalize().into());

        // Block 0 is J0 = nonce || 1 (the tag mask); blocks 1.. are the keystream from inc32(J0).
        let mut counters = [aes::Block::default(); SHORT_GCM_BLOCKS + 1];
        for (counter, block) in (1u32..).zip(counters[..=blocks].iter_mut()) {
            block[..GCM_NONCE_LEN].copy_from_slice(nonce);
            block[GCM_NONCE_LEN..].copy_from_slice(&counter.to_be_bytes());
        }
        self.aes.encrypt_blocks(&mut counters[..=blocks]);

        let tag_mask = u128::from_ne_bytes(counters[0].into());
        let received = tag.first_chunk::<GCM_TAG_LEN>().ok_or(CryptoError)?;
        if !bool::from((digest ^ tag_mask).ct_eq(&u128::from_ne_bytes(*received))) {
            return Err(CryptoError);
        }
        let (whole, tail) = ciphertext.as_chunks_mut::<BLOCK_LEN>();
        for (chunk, keystream) in whole.iter_mut().zip(&counters[1..]) {
            let keystream: [u8; BLOCK_LEN] = (*keystream).into();
            *chunk = (u128::from_ne_bytes(*chunk) ^ u128::from_ne_bytes(keystream)).to_ne_bytes();
        }
        if let Some(keystream) = counters.get(whole.len() + 1) {
            for (byte, key_byte) in tail.iter_mut().zip(keystream.iter()) {
                *byte ^= key_byte;
            }
        }
        Ok(ciphertext)
    }

    /// Appends `nonce || ciphertext || tag` of `plaintext` to `out`.
    pub fn gcm_seal(&self, nonce: &[u8; GCM_NONCE_LEN], plaintext: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .gcm
            .encrypt_in_place_detached(Nonce::from_slice(nonce), &[], &mut out[start..])
            .expect("AES-GCM seal cannot fail below 64 GiB");
        out.extend_from_slice(&tag);
    }

    /// Decrypts AES-256-CBC with PKCS#7 padding in place; the padding is checked, as Java's and .NET's
    /// crypto libraries do.
    pub fn cbc_open<'a>(
        &self,
        iv: &[u8; CBC_IV_LEN],
        data: &'a mut [u8],
    ) -> Result<&'a [u8], CryptoError> {
        cbc::Decryptor::<Aes256>::inner_iv_init(self.aes.clone(), &(*iv).into())
            .decrypt_padded_mut::<Pkcs7>(data)
            .map_err(|_| CryptoError)
    }

    /// Appends the AES-256-CBC/PKCS#7 ciphertext of `plaintext` (without the IV) to `out`.
    pub fn cbc_seal(&self, iv: &[u8; CBC_IV_LEN], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let padded_len = (plaintext.len() / CBC_IV_LEN + 1) * CBC_IV_LEN;
        out.extend_from_slice(plaintext);
        out.resize(start + padded_len, 0);
        let written = cbc::Encryptor::<Aes256>::inner_iv_init(self.aes.clone(), &(*iv).into())
            .encrypt_padded_mut::<Pkcs7>(&mut out[start..], plaintext.len())
            .expect("buffer sized for PKCS#7 padding")
            .len();
        debug_assert_eq!(written, padded_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new([7u8; 32])
    }

    #[test]
    fn gcm_round_trip_and_tamper_detection() {
        let mut blob = Vec::new();
        secret().gcm_seal(&[1; 12], b"hello uid2", &mut blob);
        assert_eq!(blob.len(), 12 + 10 + 16);
        let mut copy = blob.clone();
        assert_eq!(secret().gcm_open(&mut copy).unwrap(), b"hello uid2");
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(secret().gcm_open(&mut bad), Err(CryptoError), "flip at {i}");
        }
        assert_eq!(
            Secret::new([8; 32]).gcm_open(&mut blob.clone()),
            Err(CryptoError)
        );
        assert_eq!(secret().gcm_open(&mut [0u8; 27]), Err(CryptoError));
    }

    /// The short path against `aes-gcm` on random keys, nonces and lengths (both sides of
    /// `SHORT_GCM_BLOCKS`), and on tamperings of every part of the blob.
    #[test]
    fn gcm_open_matches_aes_gcm() {
        let mut rng = fastrand::Rng::with_seed(0x6c6d);
        for case in 0..4_000 {
            let key: [u8; 32] = std::array::from_fn(|_| rng.u8(..));
            let nonce: [u8; 12] = std::array::from_fn(|_| rng.u8(..));
            let len = rng.usize(..=(SHORT_GCM_BLOCKS + 2) * BLOCK_LEN);
            let plaintext: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let secret = Secret::new(key);
            let reference = Aes256Gcm::new(&key.into());
            let mut blob = nonce.to_vec();
            let mut sealed = plaintext.clone();
            let tag = reference
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut sealed)
                .unwrap();
            blob.extend_from_slice(&sealed);
            blob.extend_from_slice(&tag);

            let mut copy = blob.clone();
            assert_eq!(
                secret.gcm_open(&mut copy).map(|p| p.to_vec()),
                Ok(plaintext.clone()),
                "case {case}, {len} bytes"
            );
            let mut tampered = blob.clone();
            let at = rng.usize(..tampered.len());
            tampered[at] ^= 1 << rng.u8(..8);
            assert_eq!(
                secret.gcm_open(&mut tampered),
                Err(CryptoError),
                "case {case}: flip at {at} of {}",
                blob.len()
            );
            let mut truncated = blob[..blob.len() - 1].to_vec();
            assert_eq!(secret.gcm_open(&mut truncated), Err(CryptoError));
        }
    }

    #[test]
    fn cbc_round_trip_checks_padding() {
        let mut ct = Vec::new();
        secret().cbc_seal(&[2; 16], b"0123456789abcdef-more", &mut ct);
        assert_eq!(ct.len(), 32);
        let mut copy = ct.clone();
        assert_eq!(
            secret().cbc_open(&[2; 16], &mut copy).unwrap(),
            b"0123456789abcdef-more"
        );
        assert!(secret().cbc_open(&[2; 16], &mut ct[..31].to_vec()).is_err());
        assert!(
            Secret::new([9; 32])
                .cbc_open(&[2; 16], &mut ct.clone())
                .is_err()
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        assert_eq!(format!("{:?}", secret()), "Secret(..)");
    }
}
