//! Which published platform modules the operator trusts: a source policy and cosign
//! signatures, decided and checked in-process (never by running `cosign`).
//!
//! A [`ModulePolicy`] lists source rules; the first whose pattern matches a reference
//! (`REGISTRY/REPOSITORY`, `*` matching any run of characters) decides:
//!
//! - `deny: true`: the module is refused (`SourceDenied`);
//! - `keys: [...]`: the module is used only with a valid signature by one of these keys
//!   (`SignatureInvalid` otherwise);
//! - neither: allowed, unverified.
//!
//! When a policy has rules and none matches, the source is not allowed. With no policy at all,
//! every digest-pinned module is accepted as `Unverified`.
//!
//! Signatures are cosign's classic layout: the tag `sha256-<hex>.sig` next to the module holds
//! one layer per signature, each a "simple signing" payload naming the signed manifest digest,
//! with the base64 ECDSA P-256 signature (ASN.1 DER, over SHA-256 of the payload) in the
//! annotation `dev.cosignproject.cosign/signature`. Keys are PEM public keys as `cosign
//! generate-key-pair` writes them (`cosign.pub`).
//!
//! ```
//! use cuebe_core::trust::{ModulePolicy, SourceDecision};
//! let policy: ModulePolicy = serde_json::from_value(serde_json::json!({
//!     "sources": [
//!         {"pattern": "ghcr.io/acme/experimental/*", "deny": true},
//!         {"pattern": "ghcr.io/acme/*"}
//!     ]
//! })).unwrap();
//! assert!(matches!(policy.decide("ghcr.io/acme/experimental/web"), SourceDecision::Denied { .. }));
//! assert!(matches!(policy.decide("ghcr.io/acme/platform"), SourceDecision::Unverified));
//! assert!(matches!(policy.decide("docker.io/other/x"), SourceDecision::NotAllowed));
//! ```
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

// The manual-approval gate (`requireApproval`): its own file, one decision.
mod approval;
pub use approval::{ApprovalDecision, ApprovedDigests, canonical_digest};

/// Annotation of a cosign signature layer holding the base64 signature.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Media type of a cosign "simple signing" payload layer.
pub const COSIGN_PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The operator's source policy for published modules (a file it reads at start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulePolicy {
    /// Rules, first match wins.
    #[serde(default)]
    pub sources: Vec<SourceRule>,
}

/// One rule of a [`ModulePolicy`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRule {
    /// `REGISTRY/REPOSITORY` pattern; `*` matches any run of characters.
    pub pattern: String,
    /// Refuse modules from matching sources.
    #[serde(default)]
    pub deny: bool,
    /// Use a module from a matching source only once its digest (the OCI manifest digest, or
    /// the git commit) is approved in the cluster: see [`ModulePolicy::decide_approval`].
    #[serde(default, rename = "requireApproval")]
    pub require_approval: bool,
    /// PEM public keys; a matching module must carry a valid signature by one of them.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// What a [`ModulePolicy`] says about one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceDecision {
    /// A deny rule matches.
    Denied {
        /// The rule's pattern.
        pattern: String,
    },
    /// Rules exist and none matches.
    NotAllowed,
    /// Allowed only with a valid signature by one of these keys.
    Signed {
        /// The rule's pattern.
        pattern: String,
        /// PEM public keys.
        keys: Vec<String>,
    },
    /// Allowed without a signature (no policy, or a rule without keys).
    Unverified,
}

/// A policy file that cannot be used: the operator refuses to start with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module policy: sources[{index}]: {message}")]
pub struct InvalidPolicy {
    /// The rule.
    pub index: usize,
    /// What is wrong with it.
    pub message: String,
}

impl ModulePolicy {
    /// Checks every rule: a pattern, a rule that denies and requires keys at once, keys that
    /// do not parse. Called at start so that a policy mistake fails loudly, not at the first
    /// module it would have refused.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        for (index, rule) in self.sources.iter().enumerate() {
            let bad = |message: String| InvalidPolicy { index, message };
            if rule.pattern.trim().is_empty() {
                return Err(bad("pattern is empty".into()));
            }
            if rule.deny && rule.require_approval {
                return Err(bad("a deny rule needs no approval (requireApproval)".into()));
            }
            if rule.deny && !rule.keys.is_empty() {
                return Err(bad("a deny rule has no keys".into()));
            }
            for (k, key) in rule.keys.iter().enumerate() {
                PublicKey::from_pem(key).map_err(|e| bad(format!("keys[{k}]: {e}")))?;
            }
        }
        Ok(())
    }

    /// The decision for `source` (`REGISTRY/REPOSITORY`).
    pub fn decide(&self, source: &str) -> SourceDecision {
        if self.sources.is_empty() {
            return SourceDecision::Unverified;
        }
        match self.sources.iter().find(|r| glob_match(&r.pattern, source)) {
            None => SourceDecision::NotAllowed,
            Some(r) if r.deny => SourceDecision::Denied {
                pattern: r.pattern.clone(),
            },
            Some(r) if r.keys.is_empty() => SourceDecision::Unverified,
            Some(r) => SourceDecision::Signed {
                pattern: r.pattern.clone(),
                keys: r.keys.clone(),
            },
        }
    }
}

/// `*` matches any run of characters (including `/`); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return text.is_empty(),
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// An ECDSA P-256 public key (the kind `cosign generate-key-pair` makes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The uncompressed point (65 bytes, `0x04 || X || Y`).
    point: Vec<u8>,
    /// `sha256:` of the SubjectPublicKeyInfo DER, shortened: how status and logs name a key.
    id: String,
}

/// The DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }. Written out rather
/// than parsed with an ASN.1 library: it is the only key form accepted, so an exact prefix
/// check is the whole parse.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl PublicKey {
    /// Parses a `-----BEGIN PUBLIC KEY-----` PEM holding a P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        if !pem.contains("-----BEGIN PUBLIC KEY-----") {
            return Err("not a PEM public key (-----BEGIN PUBLIC KEY-----)".into());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("the PEM body is not base64: {e}"))?;
        Self::from_spki_der(&der)
    }

    /// Parses a SubjectPublicKeyInfo DER holding an uncompressed P-256 point.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        let point = der
            .strip_prefix(P256_SPKI_PREFIX.as_slice())
            .filter(|p| p.len() == 65 && p[0] == 0x04)
            .ok_or("only ECDSA P-256 public keys are supported (as cosign generate-key-pair writes them)")?;
        let id = format!("sha256:{}", &hex::encode(Sha256::digest(der))[..16]);
        Ok(Self {
            point: point.to_vec(),
            id,
        })
    }

    /// The PEM of an uncompressed P-256 point (what a signer publishes).
    pub fn pem_of_point(point: &[u8]) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(point);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// How status and logs name the key: `sha256:` and 16 hex of its DER.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(payload, signature)
        .is_ok()
    }
}

/// One signature found next to a module: the payload and its base64 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSignature {
    /// The simple-signing payload (JSON) bytes.
    pub payload: Vec<u8>,
    /// The `dev.cosignproject.cosign/signature` annotation.
    pub signature_b64: String,
}

/// The cosign "simple signing" payload for a manifest digest, as cosign writes it.
pub fn simple_signing_payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap_or_default()
}

/// The id of the key that validly signed `digest` among `found`, or why none did.
///
/// A signature counts when it verifies under one of `keys` and its payload names exactly this
/// manifest digest (a valid signature of another digest proves nothing about this one).
pub fn verify_signatures(
    digest: &str,
    found: &[FoundSignature],
    keys: &[String],
) -> Result<String, String> {
    if found.is_empty() {
        return Err(format!(
            "no signature found for {digest} (cosign tag {})",
            signature_tag(digest)
        ));
    }
    let keys: Vec<PublicKey> = keys
        .iter()
        .filter_map(|k| PublicKey::from_pem(k).ok())
        .collect();
    let mut problems = Vec::new();
    for (i, s) in found.iter().enumerate() {
        let Ok(signature) =
            base64::engine::general_purpose::STANDARD.decode(s.signature_b64.trim())
        else {
            problems.push(format!("signature {i}: not base64"));
            continue;
        };
        let Some(key) = keys.iter().find(|k| k.verifies(&s.payload, &signature)) else {
            problems.push(format!(
                "signature {i}: not made by any key the policy lists"
            ));
            continue;
        };
        let signed: Option<String> = serde_json::from_slice::<serde_json::Value>(&s.payload)
            .ok()
            .and_then(|v| {
                v.pointer("/critical/image/docker-manifest-digest")
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            });
        if signed.as_deref() != Some(digest) {
            problems.push(format!(
                "signature {i}: by key {} but for {}, not {digest}",
                key.id(),
                signed.unwrap_or_else(|| "an unreadable payload".into())
            ));
            continue;
        }
        return Ok(key.id().to_string());
    }
    Err(problems.join("; "))
}

/// The tag cosign stores a manifest's signatures under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    const DIGEST: &str = "sha256:602bec774d6b83f7866f4a5f32ce39764383183940408a10dfaa4aa75912d0f6";

    fn key_pair() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pem = PublicKey::pem_of_point(pair.public_key().as_ref());
        (pair, pem)
    }

    fn sign(pair: &EcdsaKeyPair, payload: &[u8]) -> FoundSignature {
        let signature = pair.sign(&SystemRandom::new(), payload).unwrap();
        FoundSignature {
            payload: payload.to_vec(),
            signature_b64: base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
        }
    }

    #[test]
    fn a_signature_counts_only_by_a_listed_key_and_for_this_digest() {
        let (ours, our_pem) = key_pair();
        let (theirs, _) = key_pair();
        let payload = simple_signing_payload("127.0.0.1:5000/platform", DIGEST);
        let other_digest = format!("sha256:{}", "1".repeat(64));
        let for_other = simple_signing_payload("127.0.0.1:5000/platform", &other_digest);
        let mut tampered = sign(&ours, &payload);
        tampered.payload = simple_signing_payload("127.0.0.1:5000/evil", DIGEST);
        let keys = [our_pem.clone()];
        let id = PublicKey::from_pem(&our_pem).unwrap().id().to_string();
        // (signatures found, Ok(key id) or the start of the refusal)
        let cases: [(Vec<FoundSignature>, Result<String, &str>); 6] = [
            (vec![sign(&ours, &payload)], Ok(id.clone())),
            (
                vec![sign(&theirs, &payload), sign(&ours, &payload)],
                Ok(id.clone()),
            ),
            (vec![], Err("no signature found")),
            (
                vec![sign(&theirs, &payload)],
                Err("signature 0: not made by any key"),
            ),
            (vec![sign(&ours, &for_other)], Err("signature 0: by key")),
            (vec![tampered], Err("signature 0: not made by any key")),
        ];
        for (i, (found, expected)) in cases.into_iter().enumerate() {
            let got = verify_signatures(DIGEST, &found, &keys);
            match expected {
                Ok(id) => assert_eq!(got, Ok(id), "case {i}"),
                Err(start) => {
                    let message = got.expect_err("refused");
                    assert!(message.starts_with(start), "case {i}: {message}");
                }
            }
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let (_, pem) = key_pair();
        let policy = ModulePolicy {
            sources: vec![
                SourceRule {
                    pattern: "127.0.0.1:*/denied/*".into(),
                    deny: true,
                    keys: vec![],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "127.0.0.1:*/platform.example.com/*".into(),
                    deny: false,
                    keys: vec![pem.clone()],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "ghcr.io/acme/*".into(),
                    deny: false,
                    keys: vec![],
                    ..SourceRule::default()
                },
            ],
        };
        policy.validate().unwrap();
        let cases: [(&str, &str); 5] = [
            ("127.0.0.1:5000/denied/platform", "Denied"),
            ("127.0.0.1:5000/platform.example.com/platform", "Signed"),
            ("ghcr.io/acme/web", "Unverified"),
            ("ghcr.io/other/web", "NotAllowed"),
            ("127.0.0.1:5000/other", "NotAllowed"),
        ];
        for (source, expected) in cases {
            let got = match policy.decide(source) {
                SourceDecision::Denied { .. } => "Denied",
                SourceDecision::NotAllowed => "NotAllowed",
                SourceDecision::Signed { .. } => "Signed",
                SourceDecision::Unverified => "Unverified",
            };
            assert_eq!(got, expected, "{source}");
        }
        assert_eq!(
            ModulePolicy::default().decide("anything"),
            SourceDecision::Unverified
        );
    }

    #[test]
    fn a_policy_mistake_is_refused_naming_the_rule() {
        let bad_key = ModulePolicy {
            sources: vec![SourceRule {
                pattern: "x/*".into(),
                deny: false,
                keys: vec!["not a key".into()],
                ..SourceRule::default()
            }],
        };
        let err = bad_key.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("module policy: sources[0]: keys[0]: not a PEM public key"),
            "{err}"
        );
        let both = ModulePolicy {
            sources: vec![SourceRule {
                pattern: "x/*".into(),
                deny: true,
                keys: vec![key_pair().1],
                ..SourceRule::default()
            }],
        };
        assert!(
            both.validate()
                .unwrap_err()
                .to_string()
                .contains("a deny rule has no keys")
        );
        let unknown: Result<ModulePolicy, _> = serde_json::from_value(
            serde_json::json!({"sources": [{"pattern": "x", "allow": true}]}),
        );
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `allow`")
        );
    }

    #[test]
    fn globs_match_whole_strings() {
        for (pattern, text, matches) in [
            ("ghcr.io/acme/*", "ghcr.io/acme/web", true),
            ("ghcr.io/acme/*", "ghcr.io/acme", false),
            ("ghcr.io/acme/*", "evil.io/ghcr.io/acme/web", false),
            ("*/platform", "127.0.0.1:5000/platform", true),
            ("127.0.0.1:*/p/*", "127.0.0.1:5000/p/x/y", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
        ] {
            assert_eq!(glob_match(pattern, text), matches, "{pattern} vs {text}");
        }
    }
}
