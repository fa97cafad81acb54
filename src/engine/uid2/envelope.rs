//! The UID2 operator API's v2 envelope (spec §4): requests are `0x01 || GCM(timestamp_ms || nonce(8) ||
//! JSON)` under the client secret, base64-encoded; responses are `GCM(timestamp_ms || nonce(8) || JSON)`
//! with no version byte, and must echo the request's nonce. Pure: timestamp, nonces and IV are arguments.
//! Depends on the sibling `cipher` and `wire` modules, base64 and thiserror.

use base64::Engine as _;

use super::cipher::{GCM_NONCE_LEN, Secret};
use super::wire::{self, Reader};

/// The envelope version byte of a request.
pub const REQUEST_VERSION: u8 = 1;

/// Why a response could not be opened.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("operator response is not base64")]
    NotBase64,
    #[error(
        "operator response could not be decrypted with the client secret (wrong UID2_SECRET_KEY, or not an envelope)"
    )]
    Decrypt,
    #[error("operator response is too short")]
    Truncated,
    #[error("operator response nonce does not match the request (replayed or mixed-up response)")]
    NonceMismatch,
}

/// A built request: the body to POST and the nonce its response must echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub body_base64: String,
    pub nonce: [u8; 8],
}

/// Builds a request envelope for `payload` (empty for the key endpoints).
pub fn build_request(
    secret: &Secret,
    payload: &[u8],
    timestamp_ms: i64,
    nonce: [u8; 8],
    iv: [u8; GCM_NONCE_LEN],
) -> Request {
    let mut plaintext = Vec::with_capacity(16 + payload.len());
    plaintext.extend_from_slice(&timestamp_ms.to_be_bytes());
    plaintext.extend_from_slice(&nonce);
    plaintext.extend_from_slice(payload);
    let mut envelope = Vec::with_capacity(1 + GCM_NONCE_LEN + plaintext.len() + 16);
    envelope.push(REQUEST_VERSION);
    secret.gcm_seal(&iv, &plaintext, &mut envelope);
    Request {
        body_base64: wire::STANDARD.encode(&envelope),
        nonce,
    }
}

/// An opened response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub timestamp_ms: i64,
    /// The JSON document, e.g. `{"body":{…},"status":"success"}`.
    pub json: Vec<u8>,
}

/// Opens a response body (base64 text, surrounding whitespace tolerated) and checks its nonce.
pub fn open_response(
    secret: &Secret,
    body: &[u8],
    expected_nonce: [u8; 8],
) -> Result<Response, EnvelopeError> {
    let text = body.trim_ascii();
    let mut blob = wire::STANDARD
        .decode(text)
        .map_err(|_| EnvelopeError::NotBase64)?;
    let plaintext = secret
        .gcm_open(&mut blob)
        .map_err(|_| EnvelopeError::Decrypt)?;
    let mut r = Reader::new(plaintext);
    let timestamp_ms = r.i64().ok_or(EnvelopeError::Truncated)?;
    let nonce: [u8; 8] = r.array().ok_or(EnvelopeError::Truncated)?;
    if nonce != expected_nonce {
        return Err(EnvelopeError::NonceMismatch);
    }
    Ok(Response {
        timestamp_ms,
        json: r.rest().to_vec(),
    })
}

/// Seals a response as the operator would; used by tests and the fake operator.
pub fn seal_response(
    secret: &Secret,
    json: &[u8],
    timestamp_ms: i64,
    nonce: [u8; 8],
    iv: [u8; GCM_NONCE_LEN],
) -> String {
    let mut plaintext = Vec::with_capacity(16 + json.len());
    plaintext.extend_from_slice(&timestamp_ms.to_be_bytes());
    plaintext.extend_from_slice(&nonce);
    plaintext.extend_from_slice(json);
    let mut blob = Vec::new();
    secret.gcm_seal(&iv, &plaintext, &mut blob);
    wire::STANDARD.encode(&blob)
}

/// Opens a request envelope as the operator would; used by tests and the fake operator.
/// Returns (timestamp, nonce, payload).
pub fn open_request(
    secret: &Secret,
    body: &[u8],
) -> Result<(i64, [u8; 8], Vec<u8>), EnvelopeError> {
    let mut blob = wire::STANDARD
        .decode(body.trim_ascii())
        .map_err(|_| EnvelopeError::NotBase64)?;
    let (version, rest) = blob.split_first_mut().ok_or(EnvelopeError::Truncated)?;
    if *version != REQUEST_VERSION {
        return Err(EnvelopeError::Decrypt);
    }
    let plaintext = secret.gcm_open(rest).map_err(|_| EnvelopeError::Decrypt)?;
    let mut r = Reader::new(plaintext);
    let timestamp_ms = r.i64().ok_or(EnvelopeError::Truncated)?;
    let nonce: [u8; 8] = r.array().ok_or(EnvelopeError::Truncated)?;
    Ok((timestamp_ms, nonce, r.rest().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_secret() -> Secret {
        let bytes = wire::decode_standard("ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=").unwrap();
        Secret::new(bytes.try_into().unwrap())
    }
    const IV: [u8; 12] = [
        0xcc, 0x3c, 0xca, 0xca, 0x98, 0x89, 0xea, 0xb3, 0x80, 0x0e, 0x78, 0x7e,
    ];
    const NONCE: [u8; 8] = [0x31, 0x2f, 0xe5, 0xaa, 0x08, 0xb2, 0xa0, 0x49];
    const TIMESTAMP: i64 = 1_667_885_597_644;

    /// Java PublisherTests / encrypt_request.py (spec §7).
    #[test]
    fn request_vectors_match_the_sdks_byte_for_byte() {
        let with_payload = build_request(
            &client_secret(),
            br#"{"email":"test@example.com"}"#,
            TIMESTAMP,
            NONCE,
            IV,
        );
        assert_eq!(
            with_payload.body_base64,
            "Acw8ysqYieqzgA54fifdV1TB6V+da8p/AFc8Ju/IYrD77pL7JYMJj8YqD9EsrG3d2d2j0H7kZjH41YsNLpFVCH+oce28z9L9ug=="
        );
        let empty = build_request(&client_secret(), b"", TIMESTAMP, NONCE, IV);
        assert_eq!(
            empty.body_base64,
            "Acw8ysqYieqzgA54fifdV1TB6V+da8p/AFc8Ju/o0iuqwrKKPacJn6xpUAU+"
        );
        let (ts, nonce, payload) =
            open_request(&client_secret(), with_payload.body_base64.as_bytes()).unwrap();
        assert_eq!(
            (ts, nonce, payload.as_slice()),
            (TIMESTAMP, NONCE, &br#"{"email":"test@example.com"}"#[..])
        );
    }

    #[test]
    fn response_round_trip_checks_the_nonce() {
        let json = br#"{"body":{"keys":[]},"status":"success"}"#;
        let sealed = seal_response(&client_secret(), json, 1_668_056_199_629, NONCE, IV);
        let opened =
            open_response(&client_secret(), format!("{sealed}\n").as_bytes(), NONCE).unwrap();
        assert_eq!(opened.timestamp_ms, 1_668_056_199_629);
        assert_eq!(opened.json, json);
        assert_eq!(
            open_response(&client_secret(), sealed.as_bytes(), [0; 8]),
            Err(EnvelopeError::NonceMismatch)
        );
        assert_eq!(
            open_response(&Secret::new([1; 32]), sealed.as_bytes(), NONCE),
            Err(EnvelopeError::Decrypt)
        );
        assert_eq!(
            open_response(&client_secret(), b"%%%", NONCE),
            Err(EnvelopeError::NotBase64)
        );
        let short = seal_response(&client_secret(), b"", 0, NONCE, IV);
        let mut blob = wire::STANDARD.decode(&short).unwrap();
        blob.truncate(12 + 4);
        let mut sealed_short = Vec::new();
        client_secret().gcm_seal(&IV, &blob[12..], &mut sealed_short);
        assert_eq!(
            open_response(
                &client_secret(),
                wire::STANDARD.encode(&sealed_short).as_bytes(),
                NONCE
            ),
            Err(EnvelopeError::Truncated)
        );
    }
}
