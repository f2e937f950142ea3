//! The manual-approval gate: a source rule with `requireApproval: true` lets a module from a
//! matching source be used only once its digest is approved in the cluster.
//!
//! Owns the decision, nothing else: which digests an approval may name ([`canonical_digest`]),
//! the set of approved digests ([`ApprovedDigests`]) and, for one module, whether the policy asks
//! for an approval and whether it has one ([`ModulePolicy::decide_approval`]). Reading the
//! approvals from the cluster (`PlatformModuleApproval` objects, group `cuebe.dev`) is the
//! runtime's job (`cuebe::approval`).
//!
//! The digest an approval names is what pins the module's content:
//!
//! - for an OCI module, its manifest digest, `sha256:<64 hex>` (what `oci://…@sha256:…` pins);
//! - for a git module, the commit the reference resolved to (40 hex, or 64 for a SHA-256
//!   repository).
//!
//! Invariants: an approval is of content, not of a name. The same digest from another source is
//! the same content and is approved too, but the source policy still decides first (a denied or
//! unlisted source is refused whatever is approved). A rule without `requireApproval` never looks
//! at approvals. A digest is approved while at least one approval lists it; deleting the last
//! one revokes it.
//!
//! ```
//! use cuebe_core::trust::{ApprovalDecision, ApprovedDigests, ModulePolicy};
//! let policy: ModulePolicy = serde_json::from_value(serde_json::json!({
//!     "sources": [{"pattern": "ghcr.io/acme/*", "requireApproval": true}]
//! })).unwrap();
//! let digest = format!("sha256:{}", "ab".repeat(32));
//! let mut approved = ApprovedDigests::default();
//! assert!(matches!(
//!     policy.decide_approval("ghcr.io/acme/platform", &digest, &approved),
//!     ApprovalDecision::NotApproved { .. }
//! ));
//! approved.insert("platform-v1-1-0", &digest).unwrap();
//! assert_eq!(
//!     policy.decide_approval("ghcr.io/acme/platform", &digest, &approved),
//!     ApprovalDecision::Approved { approval: "platform-v1-1-0".into() }
//! );
//! ```
use std::collections::{BTreeMap, BTreeSet};

use super::{ModulePolicy, glob_match};

/// The canonical form of a digest an approval names: `sha256:<64 hex>` (an OCI manifest) or a
/// git commit (40 or 64 hex), lowercase. Anything else (a tag, a short commit, another
/// algorithm) is refused with the rule it breaks.
///
/// ```
/// use cuebe_core::trust::canonical_digest;
/// let commit = "0123456789ABCDEF0123456789abcdef01234567";
/// assert_eq!(canonical_digest(commit).unwrap(), commit.to_lowercase());
/// assert!(canonical_digest("v1.0.0").is_err());
/// ```
pub fn canonical_digest(text: &str) -> Result<String, String> {
    let lower = text.trim().to_ascii_lowercase();
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = match lower.strip_prefix("sha256:") {
        Some(hex) => hex_of(hex, 64),
        None => hex_of(&lower, 40) || hex_of(&lower, 64),
    };
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "{text:?} is not a digest an approval can name: `sha256:<64 hex>` (an OCI manifest digest) or a full git commit (40 or 64 hex)"
        ))
    }
}

/// The digests approved in the cluster, each with the names of the approvals that list it.
///
/// ```
/// use cuebe_core::trust::ApprovedDigests;
/// let digest = format!("sha256:{}", "0".repeat(64));
/// let mut approved = ApprovedDigests::default();
/// approved.insert("web-b", &digest).unwrap();
/// approved.insert("web-a", &digest).unwrap();
/// assert_eq!(approved.approval_of(&digest), Some("web-a"));
/// assert!(approved.insert("web-c", "v1.0.0").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovedDigests {
    by_digest: BTreeMap<String, BTreeSet<String>>,
}

impl ApprovedDigests {
    /// Records that the approval `name` lists `digest`; a digest that is not one
    /// ([`canonical_digest`]) is refused and nothing is recorded.
    pub fn insert(&mut self, name: &str, digest: &str) -> Result<(), String> {
        let digest = canonical_digest(digest)?;
        self.by_digest
            .entry(digest)
            .or_default()
            .insert(name.to_string());
        Ok(())
    }

    /// Adds every approval of `other`.
    pub fn extend(&mut self, other: ApprovedDigests) {
        for (digest, names) in other.by_digest {
            self.by_digest.entry(digest).or_default().extend(names);
        }
    }

    /// The first (by name) approval listing `digest`, if any.
    pub fn approval_of(&self, digest: &str) -> Option<&str> {
        let digest = canonical_digest(digest).ok()?;
        self.by_digest
            .get(&digest)
            .and_then(|names| names.iter().next())
            .map(String::as_str)
    }

    /// Every approved digest (canonical form).
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.by_digest.keys().map(String::as_str)
    }

    /// No digest is approved.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Whether a module may be used as far as approvals go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalDecision {
    /// The first rule matching the source does not ask for approval (or no rule matches, or
    /// there is no policy: the source decision refuses or accepts it on its own).
    NotRequired,
    /// The rule asks for approval and this approval lists the digest.
    Approved {
        /// The name of the approval (the first, by name, if several list the digest).
        approval: String,
    },
    /// The rule asks for approval and no approval lists the digest: the module is not used.
    NotApproved {
        /// The pattern of the rule that asks for approval.
        pattern: String,
    },
}

impl ModulePolicy {
    /// The pattern of the first rule matching `source`, when that rule asks for approval.
    pub fn requires_approval(&self, source: &str) -> Option<&str> {
        self.sources
            .iter()
            .find(|r| glob_match(&r.pattern, source))
            .filter(|r| r.require_approval)
            .map(|r| r.pattern.as_str())
    }

    /// Some rule asks for approval: the operator must read approvals from the cluster.
    pub fn any_requires_approval(&self) -> bool {
        self.sources.iter().any(|r| r.require_approval)
    }

    /// Whether the module with `digest` (an OCI manifest digest or a git commit) from `source`
    /// may be used, as far as approvals go. The source decision ([`ModulePolicy::decide`])
    /// is separate and comes first.
    pub fn decide_approval(
        &self,
        source: &str,
        digest: &str,
        approved: &ApprovedDigests,
    ) -> ApprovalDecision {
        let Some(pattern) = self.requires_approval(source) else {
            return ApprovalDecision::NotRequired;
        };
        match approved.approval_of(digest) {
            Some(name) => ApprovalDecision::Approved {
                approval: name.to_string(),
            },
            None => ApprovalDecision::NotApproved {
                pattern: pattern.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::SourceRule;
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn a_rule_asking_for_approval_accepts_only_listed_digests() {
        let policy = ModulePolicy {
            sources: vec![
                // Narrow rules first: the first match decides, approvals included.
                SourceRule {
                    pattern: "ghcr.io/acme/sandbox/*".into(),
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "ghcr.io/acme/*".into(),
                    require_approval: true,
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/*".into(),
                    require_approval: true,
                    ..SourceRule::default()
                },
            ],
        };
        policy.validate().unwrap();
        let mut approved = ApprovedDigests::default();
        approved.insert("web-v1", &digest('a')).unwrap();
        approved.insert("also-web-v1", &digest('a')).unwrap();
        approved.insert("platform-main", COMMIT).unwrap();
        let not_approved = |p: &str| ApprovalDecision::NotApproved { pattern: p.into() };
        let by = |name: &str| ApprovalDecision::Approved {
            approval: name.into(),
        };
        // (source, digest, decision)
        let cases = [
            ("ghcr.io/acme/platform", digest('a'), by("also-web-v1")),
            (
                "ghcr.io/acme/platform",
                digest('a').to_uppercase().replace("SHA256", "sha256"),
                by("also-web-v1"),
            ),
            (
                "ghcr.io/acme/platform",
                digest('b'),
                not_approved("ghcr.io/acme/*"),
            ),
            // Content is approved, not a name: the same digest from another repository too.
            ("ghcr.io/acme/other", digest('a'), by("also-web-v1")),
            (
                "ghcr.io/acme/sandbox/web",
                digest('b'),
                ApprovalDecision::NotRequired,
            ),
            // No rule matches: the source decision refuses it, approvals are not asked.
            ("docker.io/x/y", digest('b'), ApprovalDecision::NotRequired),
            (
                "git+https://git.example.com/acme/platform",
                COMMIT.into(),
                by("platform-main"),
            ),
            (
                "git+https://git.example.com/acme/platform",
                COMMIT.to_uppercase(),
                by("platform-main"),
            ),
            (
                "git+https://git.example.com/acme/platform",
                "1".repeat(40),
                not_approved("git+https://git.example.com/*"),
            ),
            // A short commit is never an approved digest.
            (
                "git+https://git.example.com/acme/platform",
                COMMIT[..12].into(),
                not_approved("git+https://git.example.com/*"),
            ),
        ];
        for (source, d, expected) in cases {
            assert_eq!(
                policy.decide_approval(source, &d, &approved),
                expected,
                "{source} {d}"
            );
        }
        // Revoked: the last approval listing a digest is gone.
        let mut revoked = ApprovedDigests::default();
        revoked.insert("platform-main", COMMIT).unwrap();
        assert_eq!(
            policy.decide_approval("ghcr.io/acme/platform", &digest('a'), &revoked),
            not_approved("ghcr.io/acme/*")
        );
        // No policy: nothing asks for approval.
        assert_eq!(
            ModulePolicy::default().decide_approval(
                "ghcr.io/acme/platform",
                &digest('b'),
                &ApprovedDigests::default()
            ),
            ApprovalDecision::NotRequired
        );
        assert!(policy.any_requires_approval());
        assert!(!ModulePolicy::default().any_requires_approval());
    }

    #[test]
    fn an_approval_names_a_whole_digest_or_commit() {
        for (text, ok) in [
            (digest('a').as_str(), true),
            (COMMIT, true),
            (&*"f".repeat(64), true),
            ("sha256:abc", false),
            (&COMMIT[..12], false),
            ("sha512:0000", false),
            ("v1.0.0", false),
            ("", false),
        ] {
            assert_eq!(canonical_digest(text).is_ok(), ok, "{text:?}");
        }
        let mut approved = ApprovedDigests::default();
        let err = approved.insert("tag", "v1.0.0").unwrap_err();
        assert!(err.contains("not a digest an approval can name"), "{err}");
        assert!(approved.is_empty());
    }

    #[test]
    fn a_deny_rule_asking_for_approval_is_a_policy_mistake() {
        let policy = ModulePolicy {
            sources: vec![SourceRule {
                pattern: "x/*".into(),
                deny: true,
                require_approval: true,
                ..SourceRule::default()
            }],
        };
        let err = policy.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "module policy: sources[0]: a deny rule needs no approval (requireApproval)"
        );
        let parsed: ModulePolicy = serde_json::from_value(
            serde_json::json!({"sources": [{"pattern": "x/*", "requireApproval": true}]}),
        )
        .unwrap();
        assert!(parsed.sources[0].require_approval);
    }
}
