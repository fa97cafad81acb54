//! AES-256-GCM (v3/v4 tokens and the operator envelope, via the `aes-gcm` crate) and AES-256-CBC with
//! PKCS#7 (v2 tokens, via `cbc`). A [`Secret`] holds the key schedules, built once per key when a key set
//! is loaded rather than once per token. Pure; depends on aes, aes-gcm, cbc.
//!
//! A GCM blob is always `nonce(12) || ciphertext || tag(16)` with no associated data (spec §1).

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};

pub const GCM_NONCE_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
pub const CBC_IV_LEN: usize = 16;

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
