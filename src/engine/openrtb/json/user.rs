//! The `user` object of a bid request: the tokens of the configured sources in `user.eids[]` and
//! `user.ext.eids[]`, and where in `user.ext` the enrichment member goes.

use std::borrow::Cow;

use super::cursor::Cursor;
use super::lex::find_quote_or_backslash;
use super::{EidLocation, FoundToken, JsonError, Target, Tokens};

pub(super) struct UserCtx<'s> {
    pub(super) sources: &'s [&'s str],
    pub(super) member_name: &'s str,
}

/// What the last `user.ext` member was.
enum Ext {
    Absent,
    Null {
        start: usize,
        end: usize,
    },
    Object {
        open: usize,
        last_value_end: Option<usize>,
        member: Option<(usize, usize)>,
    },
    Other,
}

/// `cur` is at the value of a top-level `user` member.
pub(super) fn parse_user<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    ctx: &UserCtx<'_>,
    tokens: &mut Tokens<'a>,
) -> Result<Target, JsonError> {
    if cur.peek() != Some(b'{') {
        cur.skip_value(depth)?;
        return Ok(Target::NoUser);
    }
    let open = cur.pos;
    let mut ext = Ext::Absent;
    // A local copy, written back once (see `parse_eids`).
    let mut local = *cur;
    let last_value_end = local.object(depth, |cur, key, depth| {
        match &*key.name()? {
            b"eids" => {
                drop_location(tokens, EidLocation::UserEids);
                if cur.peek() == Some(b'[') {
                    parse_eids(cur, depth, ctx.sources, EidLocation::UserEids, tokens)?;
                } else {
                    cur.skip_value(depth)?;
                }
            }
            b"ext" => {
                drop_location(tokens, EidLocation::UserExtEids);
                ext = parse_ext(cur, depth, ctx, tokens)?;
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    *cur = local;
    // `ext` may come before `eids`; the contract is user.eids tokens first.
    if !tokens.is_sorted_by_key(|t| t.location) {
        tokens.sort_by_key(|t| t.location);
    }
    Ok(match ext {
        Ext::Absent => Target::Insert {
            at: last_value_end.unwrap_or(open + 1),
            comma: last_value_end.is_some(),
            wrap_in_ext: true,
        },
        Ext::Null { start, end } => Target::Replace {
            start,
            end,
            wrap_in_object: true,
        },
        Ext::Object {
            member: Some((start, end)),
            ..
        } => Target::Replace {
            start,
            end,
            wrap_in_object: false,
        },
        Ext::Object {
            open,
            last_value_end,
            member: None,
        } => Target::Insert {
            at: last_value_end.unwrap_or(open + 1),
            comma: last_value_end.is_some(),
            wrap_in_ext: false,
        },
        Ext::Other => Target::ExtUnusable,
    })
}

/// A later duplicate of `eids` or `ext` replaces what the earlier one contributed.
fn drop_location(tokens: &mut Tokens<'_>, location: EidLocation) {
    if tokens.iter().any(|t| t.location == location) {
        tokens.retain(|t| t.location != location);
    }
}

/// `cur` is at the value of `user.ext`.
fn parse_ext<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    ctx: &UserCtx<'_>,
    tokens: &mut Tokens<'a>,
) -> Result<Ext, JsonError> {
    let start = cur.pos;
    if cur.peek() != Some(b'{') {
        cur.skip_value(depth)?;
        let is_null = cur.bytes.get(start..cur.pos) == Some(b"null".as_slice());
        return Ok(if is_null {
            Ext::Null {
                start,
                end: cur.pos,
            }
        } else {
            Ext::Other
        });
    }
    let mut member = None;
    let last_value_end = cur.object(depth, |cur, key, depth| {
        let key = key.name()?;
        if *key == *ctx.member_name.as_bytes() {
            let value_start = cur.pos;
            cur.skip_value(depth)?;
            member = Some((value_start, cur.pos));
        } else if *key == *b"eids" {
            drop_location(tokens, EidLocation::UserExtEids);
            if cur.peek() == Some(b'[') {
                parse_eids(cur, depth, ctx.sources, EidLocation::UserExtEids, tokens)?;
            } else {
                cur.skip_value(depth)?;
            }
        } else {
            cur.skip_value(depth)?;
        }
        Ok(())
    })?;
    Ok(Ext::Object {
        open: start,
        last_value_end,
        member,
    })
}

/// `cur` is at the `[` of an eids array.
fn parse_eids<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    sources: &[&str],
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    // A local copy, written back once: the compiler can then keep the position in a register instead of
    // storing it through `cur` at every step.
    let mut local = *cur;
    local.array(depth, |cur, depth| {
        if cur.peek() == Some(b'{') {
            if compact_eid(cur, sources, location, tokens) {
                return Ok(());
            }
            parse_eid(cur, depth, sources, location, tokens)
        } else {
            cur.skip_value(depth)
        }
    })?;
    *cur = local;
    Ok(())
}

/// Reads eids of the compact shape nearly every eid has in real traffic (what Prebid Server writes):
/// `{"source":"…","uids":[{"id":"…","atype":N},…]}`, no whitespace, no escapes, `atype` absent or a
/// number, and no other members in the eid or its uids. Literal compares cost a fraction of the general
/// member walk, which was most of a scan (about 40 ns per eid that is not UID2).
///
/// Takes the eid at the cursor and every compact eid that follows it, each after one comma, and leaves the
/// cursor after the last one taken (at the `,` or `]` that follows it). Going from one eid to the next
/// here, instead of through [`Cursor::array`], saved ~40 instructions per eid (callgrind).
///
/// Returns `false` when the first eid is not compact, having moved nothing and pushed nothing; [`parse_eid`]
/// then reads the eid from the same place. An eid after the first that is not compact is likewise left,
/// untouched, to the array walk. Whatever this accepts, `parse_eid` accepts with the same tokens, so the
/// shortcut never changes a result.
#[inline]
pub(super) fn compact_eid<'a>(
    cur: &mut Cursor<'a>,
    sources: &[&str],
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> bool {
    let bytes = cur.bytes;
    let mut pos = cur.pos;
    let mut taken = false;
    // Every way out of an eid but the last drops what it pushed. A version with one exit (an inner
    // function returning `Option`) cost ~350 more instructions per 2 KB request (callgrind), so the exits
    // repeat.
    loop {
        let first = tokens.len();
        let Some((source, after_source)) = compact_string(bytes, pos, b"{\"source\":\"") else {
            return taken;
        };
        pos = after_source;
        if !bytes
            .get(pos..)
            .is_some_and(|rest| rest.starts_with(b",\"uids\":["))
        {
            return taken;
        }
        pos += b",\"uids\":[".len();
        let source_index = sources.iter().position(|name| name.as_bytes() == source);
        loop {
            let Some((id, after_id)) = compact_string(bytes, pos, b"{\"id\":\"") else {
                tokens.truncate(first);
                return taken;
            };
            pos = after_id;
            if bytes
                .get(pos..)
                .is_some_and(|rest| rest.starts_with(b",\"atype\":"))
            {
                pos += b",\"atype\":".len();
                let digits = bytes
                    .get(pos..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits == 0 {
                    tokens.truncate(first);
                    return taken;
                }
                pos += digits;
            }
            if bytes.get(pos) != Some(&b'}') {
                tokens.truncate(first);
                return taken;
            }
            if let Some(source_index) = source_index {
                debug_assert!(std::str::from_utf8(id).is_ok());
                // SAFETY: `scan` checked that the whole input is UTF-8, and `id` lies between two `"`
                // bytes, which are ASCII and so never inside a multi-byte character: `id` starts and ends
                // on character boundaries. (`from_utf8` here cost ~1 instruction per byte of every
                // token, about 2% of a 2 KB request.)
                let id = unsafe { std::str::from_utf8_unchecked(id) };
                tokens.push(FoundToken {
                    id: Cow::Borrowed(id),
                    source_index,
                    location,
                });
            }
            match bytes.get(pos + 1) {
                Some(b',') => pos += 2,
                Some(b']') => {
                    pos += 2;
                    break;
                }
                _ => {
                    tokens.truncate(first);
                    return taken;
                }
            }
        }
        if bytes.get(pos) != Some(&b'}') {
            tokens.truncate(first);
            return taken;
        }
        pos += 1;
        cur.pos = pos;
        taken = true;
        if bytes.get(pos) != Some(&b',') {
            return true;
        }
        pos += 1;
    }
}

/// At `at`, `prefix` (ending in an opening quote) and then a string without escapes: the string's bytes
/// and the offset after its closing quote.
#[inline(always)]
fn compact_string<'a>(bytes: &'a [u8], at: usize, prefix: &[u8]) -> Option<(&'a [u8], usize)> {
    let start = at + prefix.len();
    if !bytes.get(at..)?.starts_with(prefix) {
        return None;
    }
    match find_quote_or_backslash(bytes.get(start..)?)? {
        (len, true) => Some((bytes.get(start..start + len)?, start + len + 1)),
        (_, false) => None,
    }
}

/// `cur` is at the `{` of one eid.
pub(super) fn parse_eid<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    sources: &[&str],
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    let first = tokens.len();
    let mut source_index = None;
    let mut uids_at = None;
    // The source under which the ids now in `tokens[first..]` were read.
    let mut read_as = None;
    cur.object(depth, |cur, key, depth| {
        match &*key.name()? {
            b"source" => {
                source_index = if cur.peek() == Some(b'"') {
                    // Compared as (unescaped) bytes: no `&str` and no char boundary checks needed.
                    let source = cur.string()?.name()?;
                    let mut found = None;
                    for (index, name) in sources.iter().enumerate() {
                        if *name.as_bytes() == *source {
                            found = Some(index);
                            break;
                        }
                    }
                    found
                } else {
                    cur.skip_value(depth)?;
                    None
                };
            }
            b"uids" => {
                // Checked first: `truncate` calls the (empty) drop of the tail even when there is none.
                if tokens.len() > first {
                    tokens.truncate(first);
                }
                read_as = None;
                uids_at = (cur.peek() == Some(b'[')).then_some(cur.pos);
                match (source_index, uids_at) {
                    // The usual order: the source is known, read the ids in this one pass.
                    (Some(index), Some(_)) => {
                        parse_uids(cur, depth, index, location, tokens)?;
                        read_as = Some(index);
                    }
                    _ => cur.skip_value(depth)?,
                }
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    // `uids` came before `source`, or a later duplicate `source` changed it: read the ids again under
    // the source that won. Rare, so a second pass is fine.
    if read_as != source_index {
        tokens.truncate(first);
        if let (Some(index), Some(at)) = (source_index, uids_at) {
            let mut uids = Cursor { pos: at, ..*cur };
            parse_uids(&mut uids, depth + 1, index, location, tokens)?;
        }
    }
    Ok(())
}

/// `cur` is at the `[` of a `uids` array.
fn parse_uids<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    source_index: usize,
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    cur.array(depth, |cur, depth| {
        if cur.peek() == Some(b'{') {
            parse_uid(cur, depth, source_index, location, tokens)
        } else {
            cur.skip_value(depth)
        }
    })
}

/// `cur` is at the `{` of one uid.
fn parse_uid<'a>(
    cur: &mut Cursor<'a>,
    depth: usize,
    source_index: usize,
    location: EidLocation,
    tokens: &mut Tokens<'a>,
) -> Result<(), JsonError> {
    let mut id = None;
    cur.object(depth, |cur, key, depth| {
        if *key.name()? == *b"id" {
            id = if cur.peek() == Some(b'"') {
                Some(cur.string()?)
            } else {
                cur.skip_value(depth)?;
                None
            };
        } else {
            cur.skip_value(depth)?;
        }
        Ok(())
    })?;
    if let Some(id) = id {
        tokens.push(FoundToken {
            id: id.text()?,
            source_index,
            location,
        });
    }
    Ok(())
}
