//! Token decryption, one token per iteration: `uid2::decrypt` for v2, v3 and v4 tokens (base64 decode +
//! two AES-CBC or AES-GCM opens + the raw UID's base64), and the `DecryptCache` hit path for v4.
//!
//! Keys are the cross-SDK §7 keys (master 164, site 165, site 9000), parsed once. Every measured call is
//! checked once, outside the timing, to return `Status::Success`.
//!
//!   cargo bench --bench decrypt -- --warm-up-time 1 --measurement-time 3
//!   scripts/bench-decrypt.sh            # the same, plus the Python SDK and a comparison table
//!
//! Results land in `target/criterion/decrypt/uid2_decrypt/{v2,v3,v4}` and
//! `target/criterion/decrypt/cache_hit/v4`.
//!
//! `gcm_open/{secret,aes_gcm}` opens the same 130-byte AES-256-GCM blob (about a v4 token's outer
//! layer) with `cipher::Secret::gcm_open` (`cipher::ni`: AES-NI counter blocks in one interleaved
//! group, CLMUL GHASH with one reduction per open) and with the `aes-gcm` crate's open, side by
//! side in one run: the reason `Secret` does not open token layers through `aes-gcm`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use uid2_enricher::cache::DecryptCache;
use uid2_enricher::uid2::cipher::{GCM_NONCE_LEN, GCM_TAG_LEN, Secret};
use uid2_enricher::uid2::{self, ClientMode, Status, TokenVersion};

mod support;

fn bench_decrypt(c: &mut Criterion) {
    let keys = support::key_set();
    let now = support::NOW;
    let mut group = c.benchmark_group("decrypt");
    group.throughput(Throughput::Elements(1));

    for version in support::VERSIONS {
        let token = support::token(version, 1);
        let label = support::version_label(version);
        let check = uid2::decrypt(&token, Some(&keys), ClientMode::Bidstream, None, now);
        assert_eq!(
            check.status,
            Status::Success,
            "{label} token must decrypt: {check:?}"
        );
        assert_eq!(check.token_version, Some(version));
        group.bench_with_input(
            BenchmarkId::new("uid2_decrypt", label),
            token.as_str(),
            |b, token| {
                b.iter(|| {
                    uid2::decrypt(
                        black_box(token),
                        black_box(Some(&keys)),
                        ClientMode::Bidstream,
                        None,
                        black_box(now),
                    )
                })
            },
        );
    }

    let token = support::token(TokenVersion::V4, 1);
    let cache = DecryptCache::new(1_000);
    let first = cache.decrypt(&token, Some(&keys), ClientMode::Bidstream, None, now);
    assert_eq!(
        first.status,
        Status::Success,
        "v4 token must decrypt through the cache: {first:?}"
    );
    let hit = cache.decrypt(&token, Some(&keys), ClientMode::Bidstream, None, now);
    assert_eq!(hit, first, "a cache hit must equal the fresh result");
    group.bench_with_input(
        BenchmarkId::new("cache_hit", "v4"),
        token.as_str(),
        |b, token| {
            b.iter(|| {
                cache.decrypt(
                    black_box(token),
                    black_box(Some(&keys)),
                    ClientMode::Bidstream,
                    None,
                    black_box(now),
                )
            })
        },
    );

    group.finish();
}

fn bench_gcm_open(c: &mut Criterion) {
    let key = [0x5au8; 32];
    let secret = Secret::new(key);
    let mut blob = Vec::new();
    secret.gcm_seal(
        &[3; GCM_NONCE_LEN],
        &[0x42; 130 - GCM_NONCE_LEN - GCM_TAG_LEN],
        &mut blob,
    );
    let aes_gcm = Aes256Gcm::new(&key.into());
    let mut check = blob.clone();
    assert_eq!(
        secret.gcm_open(&mut check).ok().map(|plain| plain.to_vec()),
        Some(vec![0x42; 130 - GCM_NONCE_LEN - GCM_TAG_LEN])
    );

    let mut group = c.benchmark_group("gcm_open");
    group.throughput(Throughput::Elements(1));
    // Both contenders copy the blob into a stack buffer first, as `uid2::decrypt` does.
    group.bench_function("secret", |b| {
        b.iter(|| {
            let mut buffer = [0u8; 130];
            buffer.copy_from_slice(black_box(&blob));
            secret.gcm_open(&mut buffer).map(|plain| plain[0]).ok()
        })
    });
    group.bench_function("aes_gcm", |b| {
        b.iter(|| {
            let mut buffer = [0u8; 130];
            buffer.copy_from_slice(black_box(&blob));
            let (nonce, rest) = buffer.split_at_mut(GCM_NONCE_LEN);
            let (ciphertext, tag) = rest.split_at_mut(rest.len() - GCM_TAG_LEN);
            aes_gcm
                .decrypt_in_place_detached((&*nonce).into(), &[], ciphertext, (&*tag).into())
                .ok()
                .map(|()| ciphertext[0])
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decrypt, bench_gcm_open);
criterion_main!(benches);
