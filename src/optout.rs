//! The opt-out rule (UID2 DSP guide, `../shared/spec/openrtb.md` §5.2): a successfully decrypted token
//! whose raw UID2 opted out *after* the token's identity was established must not be used. This module
//! holds the rule and the lookup interface the enricher calls; where opt-outs come from (webhook, Kafka
//! topic, a replay file) is the shell's business. Pure; depends on std only.

/// Answers "when did this raw UID2 opt out?" in milliseconds since the epoch, if it did.
pub trait OptOutLookup: Sync {
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64>;
}

/// The lookup to use when no opt-outs are loaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoOptOuts;

impl OptOutLookup for NoOptOuts {
    fn opted_out_at_ms(&self, _raw_uid2: &str) -> Option<i64> {
        None
    }
}

impl<S: std::hash::BuildHasher + Sync> OptOutLookup for std::collections::HashMap<String, i64, S> {
    fn opted_out_at_ms(&self, raw_uid2: &str) -> Option<i64> {
        self.get(raw_uid2).copied()
    }
}

/// The rule: opted out when the opt-out is later than the token's `established` time. A token whose
/// identity was established after the opt-out (the user came back) is used.
pub fn is_opted_out(lookup: &dyn OptOutLookup, raw_uid2: &str, established_ms: i64) -> bool {
    lookup
        .opted_out_at_ms(raw_uid2)
        .is_some_and(|optout_ms| optout_ms > established_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn only_opt_outs_after_establishment_count() {
        let set: HashMap<String, i64> = [("u".to_string(), 1_000)].into();
        assert!(is_opted_out(&set, "u", 999));
        assert!(
            !is_opted_out(&set, "u", 1_000),
            "established at the opt-out instant: not before it"
        );
        assert!(!is_opted_out(&set, "u", 1_001));
        assert!(!is_opted_out(&set, "other", 0));
        assert!(!is_opted_out(&NoOptOuts, "u", 0));
    }
}
