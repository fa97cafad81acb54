//! Synthetic bid traffic for `demo`, `gen` and the tests (the module is `traffic`: `gen` is reserved in
//! Rust 2024): a key set in the key-endpoint JSON shape, and realistic OpenRTB requests whose tokens follow
//! a chosen mix of cases, so every status the enricher can give shows up. Users are drawn from a skewed
//! population, so tokens repeat as they do in real traffic. Everything is deterministic for a seed. Beside
//! bid requests it writes the same tokens into tracking-pixel URLs and JSON events, and JSON events
//! carrying raw UID2s for the tokenize direction. The key set works in both client modes (it has the
//! `/v2/key/sharing` fields too).

use std::fmt::Write as _;

use base64::Engine as _;

use crate::engine::uid2::cipher::Secret;
use crate::engine::uid2::encrypt::{TokenSpec, generate};
use crate::engine::uid2::{IdentityScope, IdentityType, KeySet, Status, TokenVersion};

const MASTER_KEY_ID: u32 = 1001;
const SITE_KEY_ID: u32 = 2001;
/// The EUID key set's keys (an EUID operator's key ids are its own; distinct ids catch a token decrypted
/// with the wrong set).
const EUID_MASTER_KEY_ID: u32 = 3001;
const EUID_SITE_KEY_ID: u32 = 4001;
/// A key the generated key set does not hold: tokens under it get `not_authorized_for_key`.
const FOREIGN_SITE_KEY_ID: u32 = 2999;
const PUBLISHER_SITE_ID: i32 = 1234;
/// The sharing fields of the generated key set: the SDKs' constant master keyset id, and the caller's
/// default keyset (which holds the site key).
const MASTER_KEYSET_ID: i64 = 9_999_999;
const DEFAULT_KEYSET_ID: i64 = 99_999;
const DAY_MS: i64 = 86_400_000;

/// One kind of token a request can carry, with the status the enricher should give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Case {
    ValidV2,
    ValidV3,
    ValidV4,
    Expired,
    UnknownSiteKey,
    Tampered,
    /// An EUID token sealed with the UID2 keys (what a UID2 key set answers for EUID tokens).
    Euid,
    /// An EUID token sealed with the EUID key set ([`Generator::euid_keys_json`]), in an `euid.eu` eid:
    /// `success` with both key sets. Not in [`Case::ALL`], whose cases one UID2 key set answers.
    EuidValid,
    CstgMatchingDomain,
    CstgOtherDomain,
    NoToken,
    /// Not a JSON object at all: dead-lettered.
    Malformed,
}

impl Case {
    /// Every case one UID2 key set answers as [`Case::expected_status`] says.
    pub const ALL: [Case; 11] = [
        Case::ValidV2,
        Case::ValidV3,
        Case::ValidV4,
        Case::Expired,
        Case::UnknownSiteKey,
        Case::Tampered,
        Case::Euid,
        Case::CstgMatchingDomain,
        Case::CstgOtherDomain,
        Case::NoToken,
        Case::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::ValidV2 => "v2",
            Case::ValidV3 => "v3",
            Case::ValidV4 => "v4",
            Case::Expired => "expired",
            Case::UnknownSiteKey => "unknown-site-key",
            Case::Tampered => "tampered",
            Case::Euid => "euid",
            Case::EuidValid => "euid-valid",
            Case::CstgMatchingDomain => "cstg-match",
            Case::CstgOtherDomain => "cstg-mismatch",
            Case::NoToken => "none",
            Case::Malformed => "malformed",
        }
    }

    /// What `uid2-status` a pixel hit or JSON event of this case gets in `mode`: as for a bid request,
    /// except that CSTG tokens pass in sharing mode (no domain check) and fail in bidstream mode (a pixel
    /// or event names no site).
    pub fn expected_status_outside_bids(
        self,
        mode: crate::engine::uid2::ClientMode,
    ) -> Option<&'static str> {
        match (self, mode) {
            (
                Case::CstgMatchingDomain | Case::CstgOtherDomain,
                crate::engine::uid2::ClientMode::Sharing,
            ) => Some(Status::Success.as_str()),
            (Case::CstgMatchingDomain | Case::CstgOtherDomain, _) => {
                Some(Status::DomainOrAppNameCheckFailed.as_str())
            }
            _ => self.expected_status(),
        }
    }

    /// What `uid2-status` the enricher must give a request of this case (`None`: dead-lettered).
    pub fn expected_status(self) -> Option<&'static str> {
        Some(match self {
            Case::ValidV2
            | Case::ValidV3
            | Case::ValidV4
            | Case::CstgMatchingDomain
            | Case::EuidValid => Status::Success.as_str(),
            Case::Expired => Status::ExpiredToken.as_str(),
            Case::UnknownSiteKey => Status::NotAuthorizedForKey.as_str(),
            Case::Tampered => Status::InvalidPayload.as_str(),
            Case::Euid => Status::InvalidIdentityScope.as_str(),
            Case::CstgOtherDomain => Status::DomainOrAppNameCheckFailed.as_str(),
            Case::NoToken => crate::engine::enrich::NO_TOKEN,
            Case::Malformed => return None,
        })
    }
}

/// Relative weights of the cases; the default resembles a healthy stream with some of every failure.
#[derive(Clone, Debug)]
pub struct Mix(pub Vec<(Case, u32)>);

impl Default for Mix {
    fn default() -> Mix {
        Mix(vec![
            (Case::ValidV4, 55),
            (Case::ValidV3, 8),
            (Case::ValidV2, 4),
            (Case::CstgMatchingDomain, 6),
            (Case::CstgOtherDomain, 2),
            (Case::Expired, 4),
            (Case::UnknownSiteKey, 2),
            (Case::Tampered, 1),
            (Case::Euid, 2),
            (Case::NoToken, 15),
            (Case::Malformed, 1),
        ])
    }
}

impl Mix {
    /// Parses `case=weight,case=weight` (names as in [`Case::name`]).
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected case=weight"))?;
            let known = Case::ALL.into_iter().chain([Case::EuidValid]);
            let case = known
                .clone()
                .find(|c| c.name() == name.trim())
                .ok_or_else(|| {
                    format!(
                        "unknown case `{name}`; known: {}",
                        known.map(Case::name).collect::<Vec<_>>().join(", ")
                    )
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            out.push((case, weight));
        }
        if out.iter().map(|(_, w)| *w).sum::<u32>() == 0 {
            return Err("the mix needs at least one case with a positive weight".into());
        }
        Ok(Mix(out))
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> Case {
        let total: u32 = self.0.iter().map(|(_, w)| *w).sum();
        let mut roll = rng.u32(0..total.max(1));
        for (case, weight) in &self.0 {
            if roll < *weight {
                return *case;
            }
            roll -= weight;
        }
        Case::NoToken
    }
}

/// Where a request carries its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Eids26,
    ExtEids25,
    Both,
}

/// A key-endpoint response (`{"body":…,"status":"success"}`) holding one master and one site key, with
/// the sharing fields too, valid from 30 days before `now_ms` to a year after.
fn key_json(
    scope: IdentityScope,
    (master_id, master): (u32, &Secret),
    (site_id, site): (u32, &Secret),
    now_ms: i64,
) -> String {
    let b64 = |s: &Secret| base64::engine::general_purpose::STANDARD.encode(s.bytes());
    let created_s = now_ms / 1000 - 30 * 86_400;
    let expires_s = now_ms / 1000 + 365 * 86_400;
    format!(
        r#"{{"body":{{"max_bidstream_lifetime_seconds":{lifetime},"max_sharing_lifetime_seconds":{lifetime},"caller_site_id":{PUBLISHER_SITE_ID},"master_keyset_id":{MASTER_KEYSET_ID},"default_keyset_id":{DEFAULT_KEYSET_ID},"token_expiry_seconds":"86400","identity_scope":"{scope}","allow_clock_skew_seconds":1800,"keys":[{{"id":{master_id},"created":{created_s},"activates":{created_s},"expires":{expires_s},"secret":"{m}","keyset_id":{MASTER_KEYSET_ID}}},{{"id":{site_id},"created":{created_s},"activates":{created_s},"expires":{expires_s},"secret":"{s}","keyset_id":{DEFAULT_KEYSET_ID}}}],"site_data":[{{"id":{PUBLISHER_SITE_ID},"domain_names":["example.com","com.example.news"]}}]}},"status":"success"}}"#,
        lifetime = 3 * 86_400 + 10,
        scope = scope.as_str(),
        m = b64(master),
        s = b64(site),
    )
}

/// A generator with its key material.
pub struct Generator {
    rng: fastrand::Rng,
    mix: Mix,
    master: Secret,
    site: Secret,
    foreign: Secret,
    euid_master: Secret,
    euid_site: Secret,
    now_ms: i64,
    users: u32,
    /// Approximate size of a request in bytes (padding comes from more impressions and eids).
    pub target_size: usize,
    keys_json: String,
    euid_keys_json: String,
}

/// One generated request.
pub struct GenRequest {
    pub case: Case,
    pub id: String,
    pub bytes: Vec<u8>,
}

impl Generator {
    /// `users` is the size of the user population tokens are drawn from (skewed: a few users are seen
    /// often, as in real traffic).
    pub fn new(seed: u64, mix: Mix, now_ms: i64, users: u32, target_size: usize) -> Generator {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut secret = || Secret::new(std::array::from_fn(|_| rng.u8(..)));
        let (master, site, foreign) = (secret(), secret(), secret());
        // From a stream of their own, so a seed's UID2 keys and requests are what they were before EUID.
        let mut euid_rng = fastrand::Rng::with_seed(seed ^ 0xe01d_0000_0000_0000);
        let mut euid_secret = || Secret::new(std::array::from_fn(|_| euid_rng.u8(..)));
        let (euid_master, euid_site) = (euid_secret(), euid_secret());
        let keys_json = key_json(
            IdentityScope::Uid2,
            (MASTER_KEY_ID, &master),
            (SITE_KEY_ID, &site),
            now_ms,
        );
        let euid_keys_json = key_json(
            IdentityScope::Euid,
            (EUID_MASTER_KEY_ID, &euid_master),
            (EUID_SITE_KEY_ID, &euid_site),
            now_ms,
        );
        Generator {
            rng,
            mix,
            master,
            site,
            foreign,
            euid_master,
            euid_site,
            now_ms,
            users: users.max(1),
            target_size,
            keys_json,
            euid_keys_json,
        }
    }

    /// The key-endpoint JSON (`{"body":…,"status":"success"}`) that decrypts the generated tokens.
    pub fn keys_json(&self) -> &str {
        &self.keys_json
    }

    /// The EUID operator's key-endpoint JSON (`"identity_scope":"EUID"`): it decrypts the `euid-valid`
    /// tokens.
    pub fn euid_keys_json(&self) -> &str {
        &self.euid_keys_json
    }

    pub fn euid_key_set(&self) -> KeySet {
        // The generator wrote this JSON itself; it always parses.
        KeySet::parse_json(self.euid_keys_json.as_bytes()).expect("generated key JSON parses")
    }

    pub fn key_set(&self) -> KeySet {
        // The generator wrote this JSON itself; it always parses.
        KeySet::parse_json(self.keys_json.as_bytes()).expect("generated key JSON parses")
    }

    /// A user id from a skewed population: squaring a uniform draw favours low ids.
    fn user(&mut self) -> u32 {
        let u = self.rng.f64();
        ((u * u) * f64::from(self.users)) as u32
    }

    fn raw_uid2(user: u32, scope: IdentityScope) -> String {
        // A stable 32-byte raw UID per user (v2 raw UIDs are SHA-256 outputs; any fixed bytes will do).
        let mut rng = fastrand::Rng::with_seed(u64::from(user) ^ 0x5eed_0000_0000);
        let mut bytes: Vec<u8> = (0..32).map(|_| rng.u8(..)).collect();
        if scope == IdentityScope::Euid {
            bytes.insert(0, 0x10);
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn token(&mut self, case: Case, user: u32) -> Option<String> {
        let version = match case {
            Case::ValidV2 => TokenVersion::V2,
            Case::ValidV3 => TokenVersion::V3,
            Case::NoToken | Case::Malformed => return None,
            _ => TokenVersion::V4,
        };
        let scope = if matches!(case, Case::Euid | Case::EuidValid) {
            IdentityScope::Euid
        } else {
            IdentityScope::Uid2
        };
        let raw = Self::raw_uid2(user, scope);
        // Tokens are refreshed hourly by publishers: one token per user and hour keeps them repeating.
        let hour = self.now_ms / 3_600_000 * 3_600_000;
        let generated = hour - i64::from(user % 3600) * 1000;
        let expires = if case == Case::Expired {
            self.now_ms - DAY_MS
        } else {
            generated + DAY_MS
        };
        let (site_key_id, site_secret) = match case {
            Case::UnknownSiteKey => (FOREIGN_SITE_KEY_ID, &self.foreign),
            Case::EuidValid => (EUID_SITE_KEY_ID, &self.euid_site),
            _ => (SITE_KEY_ID, &self.site),
        };
        let (master_key_id, master_secret) = if case == Case::EuidValid {
            (EUID_MASTER_KEY_ID, &self.euid_master)
        } else {
            (MASTER_KEY_ID, &self.master)
        };
        let nonce_seed = (u64::from(user) << 8) | case as u64;
        let mut nonce_rng = fastrand::Rng::with_seed(nonce_seed);
        let spec = TokenSpec {
            version,
            raw_uid2: &raw,
            scope,
            identity_type: IdentityType::Email,
            prefix_override: None,
            master_key_id,
            master_secret,
            site_key_id,
            site_secret,
            site_id: PUBLISHER_SITE_ID,
            publisher_id: 0,
            client_key_id: 0,
            privacy_bits: if matches!(case, Case::CstgMatchingDomain | Case::CstgOtherDomain) {
                0x2
            } else {
                0
            },
            expires_ms: expires,
            generated_ms: generated,
            established_ms: generated - 90 * DAY_MS,
            refreshed_ms: generated,
            operator_site_id: 0,
            operator_type: 1,
            operator_version: 0,
            operator_key_id: 0,
            master_nonce: std::array::from_fn(|_| nonce_rng.u8(..)),
            site_nonce: std::array::from_fn(|_| nonce_rng.u8(..)),
        };
        let mut token = generate(&spec).ok()?;
        if case == Case::Tampered {
            // Flip one character inside the ciphertext, keeping the alphabet.
            let mut bytes = token.into_bytes();
            let at = 60 + (user as usize % 80);
            bytes[at] = if bytes[at] == b'Q' { b'R' } else { b'Q' };
            token = String::from_utf8(bytes).ok()?;
        }
        Some(token)
    }

    /// The next request.
    pub fn next_request(&mut self) -> GenRequest {
        let case = self.mix.pick(&mut self.rng);
        let id = format!("{:016x}-{:08x}", self.rng.u64(..), self.rng.u32(..));
        if case == Case::Malformed {
            let bytes = match self.rng.u8(0..3) {
                0 => format!(r#"{{"id":"{id}","imp":[{{"id":"1""#).into_bytes(),
                1 => b"\xff\xfe not utf-8 \x80".to_vec(),
                _ => format!(r#"["{id}"]"#).into_bytes(),
            };
            return GenRequest { case, id, bytes };
        }
        let user = self.user();
        let token = self.token(case, user);
        let app = self.rng.u8(0..4) == 0;
        let placement = match self.rng.u8(0..10) {
            0..=5 => Placement::Eids26,
            6..=8 => Placement::ExtEids25,
            _ => Placement::Both,
        };
        let source = if matches!(case, Case::Euid | Case::EuidValid) {
            "euid.eu"
        } else {
            "uidapi.com"
        };
        let domain = if case == Case::CstgOtherDomain {
            "other-news.net"
        } else {
            "example.com"
        };
        let shape = RequestShape {
            id: &id,
            user,
            token: token.as_deref(),
            source,
            placement,
            app,
            domain,
        };
        let bytes = self.request_json(&shape).into_bytes();
        GenRequest { case, id, bytes }
    }

    /// The next tracking-pixel hit (a URL, sometimes with a fragment or URL-encoded extras). The token
    /// parameter is `uid2_token`; `Malformed` hits are not UTF-8.
    pub fn next_pixel(&mut self) -> GenRequest {
        let case = self.mix.pick(&mut self.rng);
        let id = format!("{:016x}", self.rng.u64(..));
        if case == Case::Malformed {
            let mut bytes = format!("https://adv.example/px?oid={id}&q=").into_bytes();
            bytes.extend_from_slice(b"\xff\xfe");
            return GenRequest { case, id, bytes };
        }
        let user = self.user();
        let token = self.token(case, user);
        let ev = ["purchase", "view", "add_to_cart", "signup"][usize::from(self.rng.u8(0..4))];
        let mut url = format!(
            "https://adv.example/px?ev={ev}&oid={id}&v={}.{:02}&cur=USD",
            self.rng.u16(1..500),
            self.rng.u8(0..100)
        );
        if let Some(t) = &token {
            url.push_str("&uid2_token=");
            crate::engine::formats::pixel::encode_into(&mut url, t);
        }
        let _ = write!(
            url,
            "&ref=https%3A%2F%2Fwww.example.com%2Fcart%3Fitems%3D{}&cb={}",
            self.rng.u8(1..9),
            self.rng.u32(..)
        );
        if self.rng.u8(0..5) == 0 {
            url.push_str("#confirmation");
        }
        GenRequest {
            case,
            id,
            bytes: url.into_bytes(),
        }
    }

    /// The next JSON event (`{"event":…,"uid2_token":…,…}`; token at `/uid2_token`). `Malformed` events
    /// are truncated JSON.
    pub fn next_event(&mut self) -> GenRequest {
        let case = self.mix.pick(&mut self.rng);
        let id = format!("{:016x}", self.rng.u64(..));
        if case == Case::Malformed {
            let bytes = format!(r#"{{"event":"purchase","id":"{id}","props":{{"#).into_bytes();
            return GenRequest { case, id, bytes };
        }
        let user = self.user();
        let token = self.token(case, user);
        let token_member = token
            .map(|t| format!(r#","uid2_token":"{t}""#))
            .unwrap_or_default();
        let bytes = format!(
            r#"{{"event":"purchase","id":"{id}","ts":{}{token_member},"props":{{"value":{}.{:02},"currency":"USD","items":[{{"sku":"sku-{}","qty":1}}]}},"context":{{"page":"https:\/\/www.example.com\/checkout","ua":"Mozilla/5.0"}}}}"#,
            self.now_ms,
            self.rng.u16(1..500),
            self.rng.u8(0..100),
            self.rng.u16(..)
        )
        .into_bytes();
        GenRequest { case, id, bytes }
    }

    /// The next JSON event for the tokenize direction: a raw UID2 at `/uid2` (any token case), none
    /// (`NoToken`), or a string that is not a raw UID2 (`Malformed`, dead-lettered as
    /// `invalid_raw_uid2`). The raw UID2 is returned too, to check a round trip.
    pub fn next_raw_event(&mut self) -> (GenRequest, Option<String>) {
        let case = match self.mix.pick(&mut self.rng) {
            c @ (Case::NoToken | Case::Malformed) => c,
            _ => Case::ValidV4,
        };
        let id = format!("{:016x}", self.rng.u64(..));
        let user = self.user();
        let raw = (case == Case::ValidV4).then(|| Self::raw_uid2(user, IdentityScope::Uid2));
        let uid2 = match (&raw, case) {
            (Some(r), _) => format!(r#","uid2":"{r}""#),
            (None, Case::Malformed) => r#","uid2":"not-a-raw-uid2""#.to_string(),
            _ => String::new(),
        };
        let bytes = format!(
            r#"{{"event":"segment","id":"{id}"{uid2},"segments":[{},{}],"ts":{}}}"#,
            self.rng.u16(..),
            self.rng.u16(..),
            self.now_ms
        )
        .into_bytes();
        (GenRequest { case, id, bytes }, raw)
    }

    fn request_json(&mut self, shape: &RequestShape<'_>) -> String {
        let mut s = String::with_capacity(self.target_size + 512);
        let _ = write!(s, r#"{{"id":"{}","imp":["#, shape.id);
        self.write_imps(&mut s);
        s.push_str("],");
        if shape.app {
            write_app(&mut s, shape.domain);
        } else {
            let _ = write!(
                s,
                r#""site":{{"id":"site-9","domain":"www.{domain}","page":"https://www.{domain}/news/{}.html","ref":"https://www.google.com/","publisher":{{"id":"pub-{PUBLISHER_SITE_ID}","name":"Example"}},"cat":["IAB12"]}},"#,
                self.rng.u32(..),
                domain = shape.domain
            );
        }
        let _ = write!(
            s,
            r#""device":{{"ua":"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.135 Mobile Safari/537.36","sua":{{"browsers":[{{"brand":"Chromium","version":["131","0","6778","135"]}},{{"brand":"Google Chrome","version":["131","0","6778","135"]}}],"platform":{{"brand":"Android","version":["14"]}},"mobile":1,"source":2}},"ip":"203.0.113.{}","geo":{{"lat":40.71,"lon":-74.0,"country":"USA","region":"NY","type":2}},"language":"en","devicetype":4,"os":"Android","osv":"14"}},"#,
            self.rng.u8(1..255)
        );
        self.write_user(&mut s, shape);
        let _ = write!(
            s,
            r#""source":{{"tid":"{:016x}","schain":{{"ver":"1.0","complete":1,"nodes":[{{"asi":"ssp.example","sid":"{PUBLISHER_SITE_ID}","hp":1}}]}}}},"regs":{{"gpp":"DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA","gpp_sid":[7],"ext":{{"us_privacy":"1YNN"}}}},"at":1,"tmax":250,"cur":["USD"],"bcat":["IAB25","IAB26"]}}"#,
            self.rng.u64(..)
        );
        s
    }

    /// One impression per 1,500 bytes of the target size, a quarter of them video.
    fn write_imps(&mut self, s: &mut String) {
        let imps = 1 + self.target_size / 1500;
        for i in 0..imps {
            if i > 0 {
                s.push(',');
            }
            if self.rng.u8(0..4) == 0 {
                let _ = write!(
                    s,
                    r#"{{"id":"{}","video":{{"mimes":["video/mp4","application/javascript"],"minduration":5,"maxduration":30,"protocols":[2,3,5,6],"w":640,"h":480,"placement":1,"linearity":1}},"bidfloor":{}.{:02},"bidfloorcur":"USD","secure":1}}"#,
                    i + 1,
                    self.rng.u8(0..5),
                    self.rng.u8(0..100)
                );
            } else {
                let _ = write!(
                    s,
                    r#"{{"id":"{}","banner":{{"format":[{{"w":300,"h":250}},{{"w":320,"h":50}}],"pos":1}},"tagid":"slot-{}","bidfloor":0.{:02},"bidfloorcur":"USD","secure":1,"ext":{{"gpid":"/1234/home/slot-{}"}}}}"#,
                    i + 1,
                    i + 1,
                    self.rng.u8(10..99),
                    i + 1
                );
            }
        }
    }

    /// `user`, with the token in the eids `placement` says, other ids, and data segments up to the target
    /// size.
    fn write_user(&mut self, s: &mut String, shape: &RequestShape<'_>) {
        let uid2_eid = shape.token.map(|t| {
            format!(
                r#"{{"source":"{}","uids":[{{"id":"{t}","atype":3}}]}}"#,
                shape.source
            )
        });
        let mut other_eids = String::new();
        let extra = 1 + self.target_size / 900;
        for n in 0..extra {
            let _ = write!(
                other_eids,
                r#",{{"source":"id{n}.example","uids":[{{"id":"{:016x}{:016x}","atype":1,"ext":{{"stype":"ppuid"}}}}]}}"#,
                self.rng.u64(..),
                u64::from(shape.user)
            );
        }
        let eids26 = match (&uid2_eid, shape.placement) {
            (Some(e), Placement::Eids26 | Placement::Both) => {
                format!(r#","eids":[{e}{other_eids}]"#)
            }
            _ => format!(r#","eids":[{}]"#, other_eids.trim_start_matches(',')),
        };
        let ext = match (&uid2_eid, shape.placement) {
            (Some(e), Placement::ExtEids25 | Placement::Both) => format!(
                r#","ext":{{"consent":"CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA","eids":[{e}]}}"#
            ),
            _ => r#","ext":{"consent":"CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"}"#.to_string(),
        };
        // Larger requests carry data segments (DMP audiences), as real traffic does: they fill what the
        // impressions and eids leave of the target size (the tail written below is ~330 bytes).
        let mut data = String::new();
        let so_far = s.len() + eids26.len() + ext.len() + 40 + 330;
        if let Some(deficit) = self.target_size.checked_sub(so_far).filter(|d| *d > 80) {
            data.push_str(r#","data":[{"id":"dmp.example","name":"Example DMP","segment":["#);
            for n in 0..(deficit - 60) / 16 {
                if n > 0 {
                    data.push(',');
                }
                let _ = write!(data, r#"{{"id":"{:08x}"}}"#, self.rng.u32(..));
            }
            data.push_str("]}]");
        }
        let _ = write!(
            s,
            r#""user":{{"id":"u-{}"{eids26}{data}{ext}}},"#,
            shape.user
        );
    }
}

/// An app request's `app`, whose bundle passes the domain check exactly when `domain` does.
fn write_app(s: &mut String, domain: &str) {
    let bundle = if domain == "example.com" {
        "com.example.news"
    } else {
        "com.other.game"
    };
    let _ = write!(
        s,
        r#""app":{{"id":"app-77","name":"Example News","bundle":"{bundle}","storeurl":"https://play.google.com/store/apps/details?id={bundle}","publisher":{{"id":"pub-{PUBLISHER_SITE_ID}"}}}},"#
    );
}

/// What a bid request is built around, drawn before its body is written.
struct RequestShape<'a> {
    id: &'a str,
    user: u32,
    token: Option<&'a str>,
    /// The token's eid `source`.
    source: &'a str,
    placement: Placement,
    /// An app request rather than a site request.
    app: bool,
    /// The site's registrable domain, or the one its app bundle stands for.
    domain: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::enrich::{Context, Keys, PayloadFormat, Policy, enrich};
    use crate::engine::optout::NoOptOuts;

    /// Every case of the mix gets the status it was generated for.
    #[test]
    fn generated_requests_get_their_intended_status() {
        let now = 1_767_225_600_000;
        let mix = Mix(Case::ALL.iter().map(|c| (*c, 1)).collect());
        let mut generator = Generator::new(7, mix, now, 1000, 2000);
        let keys = generator.key_set();
        let ctx = Context {
            keys: Keys::single(Some(&keys)),
            optouts: &NoOptOuts,
            cache: None,
            now_ms: now,
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let r = generator.next_request();
            seen.insert(r.case);
            match (
                enrich(&r.bytes, PayloadFormat::Json, &ctx, &Policy::default()),
                r.case.expected_status(),
            ) {
                (Ok(out), Some(expected)) => {
                    assert_eq!(out.status_header(), expected, "{:?}", r.case)
                }
                (Err(_), None) => {}
                (other, expected) => panic!(
                    "{:?}: {:?} vs {expected:?}",
                    r.case,
                    other.map(|o| o.status_header())
                ),
            }
        }
        assert_eq!(seen.len(), Case::ALL.len());
    }

    /// Pixel hits and events get their intended status in both modes; raw events tokenize.
    #[test]
    fn pixels_and_events_get_their_intended_status() {
        use crate::engine::uid2::ClientMode;
        let now = 1_767_225_600_000;
        let mix = Mix(Case::ALL.iter().map(|c| (*c, 1)).collect());
        let mut generator = Generator::new(9, mix, now, 500, 2000);
        let keys = generator.key_set();
        let ctx = Context {
            keys: Keys::single(Some(&keys)),
            optouts: &NoOptOuts,
            cache: None,
            now_ms: now,
        };
        for mode in [ClientMode::Sharing, ClientMode::Bidstream] {
            let mut policy = Policy::default();
            policy.mode = mode;
            for _ in 0..300 {
                for (r, format) in [
                    (generator.next_pixel(), PayloadFormat::Pixel),
                    (generator.next_event(), PayloadFormat::Event),
                ] {
                    let got = enrich(&r.bytes, format, &ctx, &policy).map(|o| o.status_header());
                    assert_eq!(
                        got.ok(),
                        r.case.expected_status_outside_bids(mode),
                        "{:?} {format:?} {mode:?}",
                        r.case
                    );
                }
            }
        }
        let tctx = crate::engine::tokenize::TokenizeContext {
            keys: Some(&keys),
            now_ms: now,
        };
        let policy = crate::engine::tokenize::TokenizePolicy::default();
        for _ in 0..200 {
            let (r, raw) = generator.next_raw_event();
            let got = crate::engine::tokenize::tokenize(&r.bytes, &tctx, &policy, &mut || [7; 24])
                .map(|t| t.status);
            match (r.case, got) {
                (Case::ValidV4, Ok(crate::engine::tokenize::TokenizeStatus::Tokenized)) => {
                    assert!(raw.is_some())
                }
                (Case::NoToken, Ok(crate::engine::tokenize::TokenizeStatus::NoRawUid2)) => {}
                (Case::Malformed, Err(_)) => {}
                (case, other) => panic!("{case:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn same_seed_same_stream_and_sizes_near_the_target() {
        let make = || Generator::new(42, Mix::default(), 1_767_225_600_000, 100, 2000);
        let (mut a, mut b) = (make(), make());
        let mut total = 0;
        for _ in 0..200 {
            let (x, y) = (a.next_request(), b.next_request());
            assert_eq!(x.bytes, y.bytes);
            total += x.bytes.len();
        }
        let mean = total / 200;
        assert!((1200..3500).contains(&mean), "mean size {mean}");
    }
}
