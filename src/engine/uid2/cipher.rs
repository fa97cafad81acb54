//! AES-256-GCM (v3/v4 tokens and the operator envelope) and AES-256-CBC with PKCS#7 (v2 tokens, via
//! `cbc`). A [`Secret`] holds the key schedules, built once per key when a key set is loaded rather than
//! once per token. Pure; depends on aes, aes-gcm and cbc, and on x86-64 on its submodule `ni`.
//!
//! A GCM blob is always `nonce(12) || ciphertext || tag(16)` with no associated data (spec §1).
//!
//! # Why token-sized blobs are not opened by `aes-gcm`
//! A v4 token is two GCM layers of about 130 and 70 bytes, and opening them was most of a token's
//! decryption. `aes-gcm` 0.10 hashes one block at a time with a full reduction per block and runs the
//! counter mode through generic per-call machinery; composing `aes` and `ghash` instead still spent more
//! instructions in those crates' wrappers than in AES and GHASH themselves. So on x86-64 with AES-NI and
//! CLMUL, blobs of up to [`SHORT_GCM_BLOCKS`] blocks are opened by [`ni`] (NIST SP 800-38D §7.2, no AAD,
//! 96-bit nonce), the tag compared in constant time before any plaintext is released. Longer blobs
//! (operator responses), every seal, and CPUs without those instructions go through `aes-gcm`, so the
//! tests' seal/open round trips check one implementation against the other, and
//! `gcm_open_matches_aes_gcm` compares them directly on random keys, nonces, lengths and tamperings.
//! Measured side by side in one run by `cargo bench --bench decrypt -- gcm_open` (docs/performance.md).

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};

#[cfg(target_arch = "x86_64")]
mod ni;

pub const GCM_NONCE_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
pub const CBC_IV_LEN: usize = 16;

/// The longest ciphertext, in 16-byte blocks, that [`Secret::gcm_open`] opens with AES-NI and CLMUL on
/// the stack rather than through `aes-gcm`. Every token layer fits (a v4 outer layer is 9 blocks).
pub const SHORT_GCM_BLOCKS: usize = 15;
const BLOCK_LEN: usize = 16;

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
    /// The token-sized open, where the CPU has AES-NI and CLMUL.
    #[cfg(target_arch = "x86_64")]
    short: Option<ni::ShortGcm>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in debug output.
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn new(bytes: [u8; 32]) -> Self {
        Secret {
            bytes,
            gcm: Aes256Gcm::new(&bytes.into()),
            aes: Aes256::new(&bytes.into()),
            #[cfg(target_arch = "x86_64")]
            short: ni::ShortGcm::new(&bytes),
        }
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Opens `nonce || ciphertext || tag` in place and returns the plaintext, a sub-slice of `blob`.
    pub fn gcm_open<'a>(&self, blob: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        let ciphertext_len = blob
            .len()
            .checked_sub(GCM_NONCE_LEN + GCM_TAG_LEN)
            .ok_or(CryptoError)?;
        #[cfg(target_arch = "x86_64")]
        if let Some(short) = &self.short
            && ciphertext_len <= SHORT_GCM_BLOCKS * BLOCK_LEN
        {
            let plaintext_len = short.open(blob)?;
            return blob
                .get_mut(GCM_NONCE_LEN..GCM_NONCE_LEN + plaintext_len)
                .ok_or(CryptoError);
        }
        let (nonce, rest) = blob.split_at_mut(GCM_NONCE_LEN);
        let (ciphertext, tag) = rest.split_at_mut(ciphertext_len);
        self.gcm
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &[],
                ciphertext,
                Tag::from_slice(tag),
            )
            .map_err(|_| CryptoError)?;
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
            // The short path reads and writes the last block as 16 whole bytes: the tag after it must
            // come out unchanged.
            assert_eq!(copy[12 + len..], blob[12 + len..], "case {case}: tag bytes");
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
