//! What every `replay` worker shares, read-only: the keys, opt-outs, policies and direction the arguments
//! (and `--config`) ask for, checked before any line is read; and the stage's work on one payload with them.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;

use super::{DirectionArg, FormatArg, Now, ReplayArgs, Shape};
use crate::config::{KeysFrom, Settings};
use crate::engine::cache::DecryptCache;
use crate::engine::enrich::{self, Malformed, PayloadFormat, Policy};
use crate::engine::formats::event::JsonPointer;
use crate::engine::optout::{NoOptOuts, OptOutLookup};
use crate::engine::tokenize::{Direction, TokenizeContext, TokenizeError, TokenizePolicy};
use crate::engine::uid2::{ClientMode, IdentityScope, KeySet};
use crate::support::clock::wall_clock_ms;

/// Everything a worker needs; shared read-only.
pub(super) struct Job {
    /// One set per identity scope; the first encrypts in the tokenize direction.
    pub(super) keys: Vec<KeySet>,
    /// The sets stand for a source per scope (the config's `[[uid2.key_sources]]`, as the stage runs
    /// them) rather than `--keys` given once (one set answering every scope, as one SDK client).
    pub(super) per_scope: bool,
    pub(super) optouts: Arc<dyn OptOutLookup + Send + Sync>,
    pub(super) cache: Option<DecryptCache>,
    pub(super) policy: Policy,
    pub(super) format: PayloadFormat,
    pub(super) direction: Direction,
    pub(super) tokenize: TokenizePolicy,
    pub(super) now: Now,
    pub(super) shape: Shape,
    pub(super) write_dlq: bool,
}

impl Job {
    /// The job file → file output asks for.
    ///
    /// # Errors
    /// Unreadable config, keys or opt-outs, no keys at all, a bad `--pointer`, or `--direction tokenize`
    /// with a format or keys that cannot tokenize.
    pub(super) fn from_args(args: &ReplayArgs, now: Now) -> anyhow::Result<Job> {
        let settings = load_settings(args)?;
        let (keys_paths, configured_scopes) = keys_paths(args, settings.as_ref())?;
        let keys = crate::stage::keysource::load_keys_files(&keys_paths)?;
        if let Some(scopes) = &configured_scopes {
            check_scopes(&keys, scopes, &keys_paths)?;
        }
        let (policy, tokenize) = policies(args, settings.as_ref())?;
        let format = PayloadFormat::from(args.format);
        let direction = direction(args, &keys, &keys_paths, now)?;
        let optouts: Arc<dyn OptOutLookup + Send + Sync> = match &args.optouts {
            Some(path) => Arc::new(crate::stage::optout_feed::load_file(path)?),
            None => Arc::new(NoOptOuts),
        };
        Ok(Job {
            keys,
            per_scope: configured_scopes.is_some(),
            optouts,
            cache: (args.cache_entries > 0).then(|| DecryptCache::new(args.cache_entries)),
            policy,
            format,
            direction,
            tokenize,
            now,
            shape: args.shape,
            write_dlq: args.dlq.is_some(),
        })
    }
}

fn load_settings(args: &ReplayArgs) -> anyhow::Result<Option<Settings>> {
    // With --keys the config's operator is not used, and neither are its credentials.
    let load = if !args.keys.is_empty() {
        crate::config::load_without_operator_credentials
    } else {
        crate::config::load
    };
    Ok(args.config.as_deref().map(load).transpose()?)
}

/// `--keys`, else the keys files of the config's key sources (with the scope each is configured for, when
/// they are `[[uid2.key_sources]]`): replay never asks an operator.
fn keys_paths(
    args: &ReplayArgs,
    settings: Option<&Settings>,
) -> anyhow::Result<(Vec<PathBuf>, Option<Vec<IdentityScope>>)> {
    if !args.keys.is_empty() {
        return Ok((args.keys.clone(), None));
    }
    let from_config: Option<Vec<(PathBuf, Option<IdentityScope>)>> = settings.and_then(|s| {
        s.uid2
            .sources
            .iter()
            .map(|source| match &source.from {
                KeysFrom::File(path) => Some((path.clone(), source.scope)),
                KeysFrom::Operator { .. } => None,
            })
            .collect()
    });
    match from_config {
        Some(files) if !files.is_empty() => {
            let scopes: Option<Vec<IdentityScope>> = files.iter().map(|(_, s)| *s).collect();
            Ok((files.into_iter().map(|(p, _)| p).collect(), scopes))
        }
        _ => bail!(
            "replay needs keys: --keys KEYS.json, once per operator (what /v2/key/bidstream or /v2/key/sharing returns once decrypted; `gen --keys-out` writes one)"
        ),
    }
}

/// Each keys file of a `[[uid2.key_sources]]` entry must hold keys of the scope the entry serves, as the
/// stage requires.
fn check_scopes(
    keys: &[KeySet],
    scopes: &[IdentityScope],
    paths: &[PathBuf],
) -> anyhow::Result<()> {
    for ((set, scope), path) in keys.iter().zip(scopes).zip(paths) {
        if set.identity_scope != *scope {
            bail!(
                "the key source for {} in --config reads {}, which holds {} keys (its identity_scope); the stage would refuse it too",
                scope.as_str(),
                path.display(),
                set.identity_scope.as_str()
            );
        }
    }
    Ok(())
}

/// The config's `[pipeline]` policies (or the defaults), with the command line's overrides on top.
fn policies(
    args: &ReplayArgs,
    settings: Option<&Settings>,
) -> anyhow::Result<(Policy, TokenizePolicy)> {
    let mut policy = settings.map_or_else(Policy::default, |s| s.pipeline.policy.clone());
    policy.mode = ClientMode::from(args.mode);
    let mut tokenize =
        settings.map_or_else(TokenizePolicy::default, |s| s.pipeline.tokenize.clone());
    if let Some(param) = &args.pixel_param {
        policy.pixel_token_param.clone_from(param);
    }
    if !args.pointers.is_empty() {
        let pointers = args
            .pointers
            .iter()
            .map(|p| JsonPointer::parse(p).map_err(|e| anyhow::anyhow!("--pointer {p:?}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match args.direction {
            DirectionArg::Enrich => policy.event_token_pointers = pointers,
            DirectionArg::Tokenize => tokenize.pointers = pointers,
        }
    }
    Ok((policy, tokenize))
}

/// `--direction`: tokenizing is refused before any line is read when no line could be tokenized.
fn direction(
    args: &ReplayArgs,
    keys: &[KeySet],
    keys_paths: &[PathBuf],
    now: Now,
) -> anyhow::Result<Direction> {
    Ok(match args.direction {
        DirectionArg::Enrich => Direction::Enrich,
        DirectionArg::Tokenize => {
            if !matches!(args.format, FormatArg::Json | FormatArg::Openrtb) {
                bail!(
                    "--direction tokenize works on JSON (--format json or openrtb); raw UID2s never travel in pixels or protobuf bid requests"
                );
            }
            let probe_ms = match now {
                Now::At(ms) => ms,
                Now::Captured => wall_clock_ms(),
            };
            let ([keys], [keys_path]) = (keys, keys_paths) else {
                bail!(
                    "--direction tokenize makes tokens with one key set: give --keys once (the sharing keys of the operator whose tokens you send)"
                );
            };
            if let Err(e) = crate::engine::tokenize::can_encrypt(Some(keys), probe_ms) {
                bail!(
                    "--direction tokenize: the keys in {} cannot make tokens ({e}); they must be sharing keys (/v2/key/sharing) with an active master key, an active key in the default keyset and a caller site id",
                    keys_path.display()
                );
            }
            Direction::Tokenize
        }
    })
}

pub(super) fn enrich_context(job: &Job, now_ms: i64) -> enrich::Context<'_> {
    enrich::Context {
        keys: if job.per_scope {
            enrich::Keys::per_scope_sets(&job.keys)
        } else {
            enrich::Keys::of_sets(&job.keys)
        },
        optouts: job.optouts.as_ref(),
        cache: job.cache.as_ref(),
        now_ms,
    }
}

/// A record as the stage would produce it.
pub(super) struct Transformed<'a> {
    pub(super) output: Cow<'a, [u8]>,
    /// The `uid2-status` header.
    pub(super) status: &'static str,
    /// The `uid2-enrichment` header.
    pub(super) member: Option<String>,
}

/// The stage's work on one payload, in the replay's direction.
pub(super) fn transform<'a>(
    job: &Job,
    payload: &'a [u8],
    now_ms: i64,
) -> Result<Transformed<'a>, Malformed> {
    match job.direction {
        Direction::Enrich => {
            let ctx = enrich_context(job, now_ms);
            let enriched = enrich::enrich(payload, job.format, &ctx, &job.policy)?;
            Ok(Transformed {
                status: enriched.status_header(),
                member: enriched.member_json,
                output: enriched.output,
            })
        }
        Direction::Tokenize => {
            let ctx = TokenizeContext {
                keys: job.keys.first(),
                now_ms,
            };
            let mut nonces = crate::support::clock::token_nonce;
            match crate::engine::tokenize::tokenize(payload, &ctx, &job.tokenize, &mut nonces) {
                Ok(t) => Ok(Transformed {
                    output: t.output,
                    status: t.status.as_str(),
                    member: None,
                }),
                Err(TokenizeError::Malformed(m)) => Err(m),
                // Never emit a raw UID2: the record is held back as a dead letter.
                Err(TokenizeError::Keys(e)) => Err(Malformed {
                    reason: "keys_cannot_encrypt",
                    detail: e.to_string(),
                }),
            }
        }
    }
}
