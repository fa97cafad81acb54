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

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use uid2_enricher::cache::DecryptCache;
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

criterion_group!(benches, bench_decrypt);
criterion_main!(benches);
