//! Which published platform modules the operator trusts: a source policy, cosign signatures of
//! OCI modules and SSH signatures of git commits and tags, decided and checked in-process (never
//! by running `cosign`, `ssh-keygen` or `gpg`).
//!
//! A [`ModulePolicy`] lists source rules; the first whose pattern matches a reference
//! (`REGISTRY/REPOSITORY` for OCI, `git+https://HOST/REPO` for git; `*` matching any run of
//! characters) decides:
//!
//! - `deny: true`: the module is refused (`SourceDenied`);
//! - `keys: [...]` (OCI) and/or `allowedSigners: [...]` (git): the module is used only with a
//!   valid signature by one of these keys (`SignatureInvalid` otherwise). A rule that asks for a
//!   signature of a kind the source cannot carry (only `keys` for a git source, only
//!   `allowedSigners` for an OCI one) refuses it: a signature asked for is never skipped;
//! - neither: allowed, unverified.
//!
//! When a policy has rules and none matches, the source is not allowed. With no policy at all,
//! every digest-pinned module is accepted as `Unverified`.
//!
//! OCI signatures are cosign's classic layout: the tag `sha256-<hex>.sig` next to the module
//! holds one layer per signature, each a "simple signing" payload naming the signed manifest
//! digest, with the base64 ECDSA P-256 signature (ASN.1 DER, over SHA-256 of the payload) in the
//! annotation `dev.cosignproject.cosign/signature`. Keys are PEM public keys as `cosign
//! generate-key-pair` writes them (`cosign.pub`).
//!
//! Git signatures are what `git -c gpg.format=ssh commit -S` (or `tag -s`) writes: an armored
//! `-----BEGIN SSH SIGNATURE-----` ([sshsig]) in the commit's `gpgsig` header, or at the end of
//! a tag's message, made in the namespace `git` over the object without its signature. The keys
//! are lines in OpenSSH's `allowed_signers` format ([`AllowedSigner`]), checked by
//! [`verify_git_signature`].
//!
//! [sshsig]: https://cvsweb.openbsd.org/src/usr.bin/ssh/PROTOCOL.sshsig
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
    /// PEM public keys; a matching OCI module must carry a valid cosign signature by one of
    /// them.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Lines in OpenSSH's `allowed_signers` format (`PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY`);
    /// a matching git module is used only at a commit (or annotated tag) carrying a valid SSH
    /// signature by one of these keys. See [`AllowedSigner`].
    #[serde(default, rename = "allowedSigners")]
    pub allowed_signers: Vec<String>,
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
    /// Allowed only with a valid signature by one of these keys: `keys` for an OCI module,
    /// `allowed_signers` for a git one (either list may be empty, not both).
    Signed {
        /// The rule's pattern.
        pattern: String,
        /// PEM public keys (cosign).
        keys: Vec<String>,
        /// `allowed_signers` lines (SSH keys signing git commits and tags).
        allowed_signers: Vec<String>,
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
    /// Checks every rule: a pattern, a rule that denies and requires keys at once, keys and
    /// allowed signers that do not parse. Called at start so that a policy mistake fails loudly,
    /// not at the first module it would have refused.
    ///
    /// ```
    /// use cuebe_core::trust::ModulePolicy;
    /// let policy: ModulePolicy = serde_json::from_value(serde_json::json!({
    ///     "sources": [{"pattern": "git+https://git.example.com/*",
    ///                  "allowedSigners": ["platform@example.com ssh-ed25519 not-base64"]}]
    /// })).unwrap();
    /// let err = policy.validate().unwrap_err().to_string();
    /// assert!(err.starts_with("module policy: sources[0]: allowedSigners[0]: "), "{err}");
    /// ```
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
            if rule.deny && !rule.allowed_signers.is_empty() {
                return Err(bad("a deny rule has no allowedSigners".into()));
            }
            for (k, key) in rule.keys.iter().enumerate() {
                PublicKey::from_pem(key).map_err(|e| bad(format!("keys[{k}]: {e}")))?;
            }
            for (j, line) in rule.allowed_signers.iter().enumerate() {
                let signer = AllowedSigner::parse(line)
                    .map_err(|e| bad(format!("allowedSigners[{j}]: {e}")))?;
                if !signer.may_sign_git() {
                    return Err(bad(format!(
                        "allowedSigners[{j}]: its namespaces option does not include \"git\", so this key can never sign a commit or tag the operator accepts"
                    )));
                }
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
            Some(r) if r.keys.is_empty() && r.allowed_signers.is_empty() => {
                SourceDecision::Unverified
            }
            Some(r) => SourceDecision::Signed {
                pattern: r.pattern.clone(),
                keys: r.keys.clone(),
                allowed_signers: r.allowed_signers.clone(),
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

/// The sshsig namespace git signs commits and tags in (`ssh-keygen -Y sign -n git`).
pub const GIT_SIGNATURE_NAMESPACE: &str = "git";

/// One line of an OpenSSH `allowed_signers` file (see `ssh-keygen(1)`, ALLOWED SIGNERS):
/// `PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY [COMMENT]`, as a policy rule's `allowedSigners` lists
/// them.
///
/// - `PRINCIPALS`: who the key belongs to (comma-separated, quoted if it holds spaces); shown in
///   the status beside the key's fingerprint. It is not matched against the commit's author:
///   a signature vouches for the content, whoever committed it.
/// - `OPTIONS`: `namespaces="git,…"` (patterns with `*` and `?`, `!` to exclude) limits what the
///   key may sign; without it, every namespace. `cert-authority`, `valid-after` and
///   `valid-before` are refused (SSH certificates and validity windows are not supported).
/// - The key: Ed25519 or ECDSA (NIST P-256, P-384, P-521), also on a security key
///   (`sk-ssh-ed25519@openssh.com`, `sk-ecdsa-sha2-nistp256@openssh.com`). RSA and DSA keys
///   are refused.
///
/// ```
/// use cuebe_core::trust::AllowedSigner;
/// let signer = AllowedSigner::parse(
///     r#"platform@acme.example namespaces="git" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOcd/EDgoH23dpdFRkGx32HjK+zwRhGzpKUJORxpC3JS ci"#,
/// ).unwrap();
/// assert_eq!(signer.principals(), "platform@acme.example");
/// assert!(signer.fingerprint().starts_with("SHA256:"));
/// assert!(signer.may_sign_git());
/// let err = AllowedSigner::parse("ops@acme.example cert-authority ssh-ed25519 AAAA").unwrap_err();
/// assert!(err.starts_with("cert-authority is not supported"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSigner {
    principals: String,
    /// The `namespaces` option's patterns; `None`: every namespace.
    namespaces: Option<Vec<String>>,
    key: ssh_key::PublicKey,
}

impl AllowedSigner {
    /// Parses one `allowed_signers` line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim();
        if line.is_empty() {
            return Err("empty (expected PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY)".into());
        }
        if line.starts_with('#') {
            return Err("a comment, not a signer".into());
        }
        let (principals, rest) = first_field(line)?;
        let principals = principals.trim_matches('"').to_string();
        if principals.is_empty() {
            return Err(
                "names no principal (expected PRINCIPALS [OPTIONS] KEYTYPE BASE64KEY)".into(),
            );
        }
        let rest = rest.trim_start();
        if rest.is_empty() {
            return Err(format!("{principals:?} is followed by no key"));
        }
        let (maybe_options, after) = first_field(rest)?;
        let (options, key_text) = if looks_like_options(maybe_options) {
            (Some(maybe_options), after.trim_start())
        } else {
            (None, rest)
        };
        let mut namespaces = None;
        for option in options.map(split_options).unwrap_or_default() {
            let (name, value) = option.split_once('=').unwrap_or((option, ""));
            match name.to_ascii_lowercase().as_str() {
                "namespaces" => {
                    let value = value.trim_matches('"');
                    if value.is_empty() {
                        return Err("namespaces is empty (write namespaces=\"git\")".into());
                    }
                    namespaces = Some(value.split(',').map(|n| n.trim().to_string()).collect());
                }
                "cert-authority" => {
                    return Err(
                        "cert-authority is not supported (SSH certificates are not verified): list the signing key itself".into(),
                    );
                }
                "valid-after" | "valid-before" => {
                    return Err(format!(
                        "{name} is not supported: remove it, and remove the line when the key should no longer sign"
                    ));
                }
                _ => {
                    return Err(format!(
                        "unknown option {name:?} (allowed_signers options: namespaces, cert-authority, valid-after, valid-before)"
                    ));
                }
            }
        }
        if key_text.is_empty() {
            return Err(format!("{principals:?} is followed by options and no key"));
        }
        let key = ssh_key::PublicKey::from_openssh(key_text).map_err(|e| {
            format!("the key does not parse ({e}): expected KEYTYPE BASE64KEY, as in a .pub file")
        })?;
        match key.algorithm() {
            ssh_key::Algorithm::Ed25519
            | ssh_key::Algorithm::Ecdsa { .. }
            | ssh_key::Algorithm::SkEd25519
            | ssh_key::Algorithm::SkEcdsaSha2NistP256 => {}
            other => {
                return Err(format!(
                    "{} keys are not supported: sign with an Ed25519 or ECDSA key (ssh-keygen -t ed25519)",
                    other.as_str()
                ));
            }
        }
        Ok(Self {
            principals,
            namespaces,
            key,
        })
    }

    /// The principals, as the line names them.
    pub fn principals(&self) -> &str {
        &self.principals
    }

    /// `SHA256:` and the unpadded base64 of the key's SHA-256, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }

    /// The line's `namespaces` option lets this key sign for git (no option: it does).
    pub fn may_sign_git(&self) -> bool {
        let Some(patterns) = &self.namespaces else {
            return true;
        };
        let mut allowed = false;
        for pattern in patterns {
            match pattern.strip_prefix('!') {
                Some(excluded) if wildcard_match(excluded, GIT_SIGNATURE_NAMESPACE) => {
                    return false;
                }
                Some(_) => {}
                None => allowed |= wildcard_match(pattern, GIT_SIGNATURE_NAMESPACE),
            }
        }
        allowed
    }
}

/// The first whitespace-separated field of `text` (a `"…"` quoted part may hold spaces) and
/// what follows it.
fn first_field(text: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (at, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Ok((&text[..at], &text[at..])),
            _ => {}
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    Ok((text, ""))
}

/// A field is the options when each comma-separated part is `cert-authority` or `name=value`
/// (a key type is neither).
fn looks_like_options(field: &str) -> bool {
    split_options(field).iter().all(|o| {
        o.eq_ignore_ascii_case("cert-authority")
            || o.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    })
}

/// Splits options at commas outside quotes.
fn split_options(field: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (at, c) in field.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&field[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&field[start..]);
    parts
}

/// OpenSSH's pattern match: `*` any run of characters, `?` one character.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Who validly signed a git commit or tag: one of the policy's allowed signers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSigner {
    /// The key's fingerprint, `SHA256:…` (as `ssh-keygen -l` prints it).
    pub fingerprint: String,
    /// The principals of the `allowedSigners` line that lists the key.
    pub principal: String,
}

impl std::fmt::Display for GitSigner {
    /// `SHA256:… (platform@acme.example)`: how the status names the signer.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.fingerprint, self.principal)
    }
}

/// The signer whose SSH signature over `signed_data` checks out, or why there is none.
///
/// `signature` is the armored signature found on a git object (a commit's `gpgsig` header or
/// the end of a tag), and `signed_data` the object without it. It counts when it is an
/// [sshsig] made in the namespace `git` by a key that one of `allowed_signers` lists (and whose
/// `namespaces` option allows git), and it verifies over exactly these bytes: a commit changed
/// after it was signed does not. Lines that do not parse are skipped
/// ([`ModulePolicy::validate`] refuses them at start).
///
/// [sshsig]: https://cvsweb.openbsd.org/src/usr.bin/ssh/PROTOCOL.sshsig
pub fn verify_git_signature(
    signed_data: &[u8],
    signature: &[u8],
    allowed_signers: &[String],
) -> Result<GitSigner, String> {
    let armored = std::str::from_utf8(signature)
        .map_err(|_| "the signature is not text".to_string())?
        .trim();
    if armored.starts_with("-----BEGIN PGP SIGNATURE-----") {
        return Err("signed with GPG (OpenPGP); only SSH signatures are verified: sign with git -c gpg.format=ssh and a key the policy lists in allowedSigners".into());
    }
    if armored.starts_with("-----BEGIN SIGNED MESSAGE-----") {
        return Err("signed with an X.509 certificate (gpgsm); only SSH signatures are verified: sign with git -c gpg.format=ssh and a key the policy lists in allowedSigners".into());
    }
    let sig = ssh_key::SshSig::from_pem(format!("{armored}\n"))
        .map_err(|e| format!("the SSH signature does not parse: {e}"))?;
    let fingerprint = sig
        .public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    if sig.namespace() != GIT_SIGNATURE_NAMESPACE {
        return Err(format!(
            "the signature by key {fingerprint} was made in the namespace {:?}, not \"git\": it was made for another purpose",
            sig.namespace()
        ));
    }
    let Some(signer) = allowed_signers
        .iter()
        .filter_map(|line| AllowedSigner::parse(line).ok())
        .find(|s| s.key.key_data() == sig.public_key())
    else {
        return Err(format!(
            "signed by key {fingerprint}, which no allowedSigners line of the policy lists"
        ));
    };
    if !signer.may_sign_git() {
        return Err(format!(
            "signed by key {fingerprint} ({}), whose namespaces option does not include git",
            signer.principals
        ));
    }
    signer
        .key
        .verify(GIT_SIGNATURE_NAMESPACE, signed_data, &sig)
        .map_err(|e| {
            format!(
                "the signature by key {fingerprint} ({}) does not match the content ({e}): it was changed after it was signed, or the signature is corrupt",
                signer.principals
            )
        })?;
    Ok(GitSigner {
        fingerprint,
        principal: signer.principals,
    })
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
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "127.0.0.1:*/platform.example.com/*".into(),
                    keys: vec![pem.clone()],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/signed/*".into(),
                    allowed_signers: vec![ssh_signer_line("platform@example.com")],
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "ghcr.io/acme/*".into(),
                    ..SourceRule::default()
                },
            ],
        };
        policy.validate().unwrap();
        let cases: [(&str, &str); 6] = [
            ("127.0.0.1:5000/denied/platform", "Denied"),
            ("127.0.0.1:5000/platform.example.com/platform", "Signed"),
            ("git+https://git.example.com/signed/platform", "Signed"),
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

    fn ssh_key(algorithm: ssh_key::Algorithm) -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, algorithm).unwrap()
    }

    /// `PRINCIPAL [OPTIONS ]KEYTYPE BASE64 COMMENT` for `key`.
    fn line_of(key: &ssh_key::PrivateKey, principal: &str, options: &str) -> String {
        let public = key.public_key().to_openssh().unwrap();
        if options.is_empty() {
            format!("{principal} {public}")
        } else {
            format!("{principal} {options} {public}")
        }
    }

    fn ssh_signer_line(principal: &str) -> String {
        line_of(&ssh_key(ssh_key::Algorithm::Ed25519), principal, "")
    }

    /// What `ssh-keygen -Y sign -n NAMESPACE` writes (git uses SHA-512).
    fn ssh_sign(key: &ssh_key::PrivateKey, namespace: &str, data: &[u8]) -> Vec<u8> {
        ssh_key::SshSig::sign(key, namespace, ssh_key::HashAlg::Sha512, data)
            .unwrap()
            .to_pem(ssh_key::LineEnding::LF)
            .unwrap()
            .into_bytes()
    }

    const RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDc1eK0sUu/rVl/mal8sqWOA1xkDdG5h7pNUE4oEupbCRhNbK0pzQW+RfOZ+ATdoShLz6Y31P/mT8Lpsa4F4/q2Tek2zL91RRcPijDuzIG/v8uA8tdHCVrP5WbGryEx+hOibG85XfykSRCH24I9n340tw5wSFx716JDbnpLeorrvw== r";
    const ECDSA_KEY: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNoIPOAN7GCofLyf4EPox9YDPcor6384WPX2MpfqrxD840AFoiBOeNV5uP84e831DxxobvzNPKmN2zzxu5hbz8c= e";

    #[test]
    fn allowed_signers_lines_parse_or_say_what_is_wrong() {
        let key = ssh_key(ssh_key::Algorithm::Ed25519);
        let public = key.public_key().to_openssh().unwrap();
        let fingerprint = key
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        // (line, principals, may sign for git)
        let ok: [(String, &str, bool); 9] = [
            (
                format!("platform@acme.example {public}"),
                "platform@acme.example",
                true,
            ),
            (
                format!("  platform@acme.example\t{public}  "),
                "platform@acme.example",
                true,
            ),
            (
                format!("\"a@acme.example,b@acme.example\" namespaces=\"git\" {public}"),
                "a@acme.example,b@acme.example",
                true,
            ),
            (format!("p@x NAMESPACES=\"file,git\" {public}"), "p@x", true),
            (format!("p@x namespaces=\"g*\" {public}"), "p@x", true),
            (format!("p@x namespaces=\"file\" {public}"), "p@x", false),
            (format!("p@x namespaces=\"*,!git\" {public}"), "p@x", false),
            (format!("p@x {ECDSA_KEY}"), "p@x", true),
            (format!("p@x namespaces=\"git\" {ECDSA_KEY}"), "p@x", true),
        ];
        for (line, principals, git) in ok {
            let signer = AllowedSigner::parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(signer.principals(), principals, "{line}");
            assert_eq!(signer.may_sign_git(), git, "{line}");
        }
        assert_eq!(
            AllowedSigner::parse(&format!("p@x {public}"))
                .unwrap()
                .fingerprint(),
            fingerprint
        );
        let bad: [(String, &str); 10] = [
            (String::new(), "empty"),
            (format!("# p@x {public}"), "a comment, not a signer"),
            ("p@x".into(), "\"p@x\" is followed by no key"),
            (format!("\"p@x {public}"), "a quote is not closed"),
            (
                format!("p@x cert-authority {public}"),
                "cert-authority is not supported",
            ),
            (
                format!("p@x valid-after=\"20240101\" {public}"),
                "valid-after is not supported",
            ),
            (
                format!("p@x restrict=\"yes\" {public}"),
                "unknown option \"restrict\"",
            ),
            (
                "p@x ssh-ed25519 not-base64".into(),
                "the key does not parse",
            ),
            (
                "p@x namespaces=\"git\"".into(),
                "\"p@x\" is followed by options and no key",
            ),
            (format!("p@x {RSA_KEY}"), "ssh-rsa keys are not supported"),
        ];
        for (line, start) in bad {
            let err = AllowedSigner::parse(&line).expect_err(&line);
            assert!(err.starts_with(start), "{line}: {err}");
        }

        // At start: the rule and the line are named.
        let policy = |lines: Vec<String>| ModulePolicy {
            sources: vec![
                SourceRule {
                    pattern: "ghcr.io/*".into(),
                    ..SourceRule::default()
                },
                SourceRule {
                    pattern: "git+https://git.example.com/*".into(),
                    allowed_signers: lines,
                    ..SourceRule::default()
                },
            ],
        };
        policy(vec![format!("p@x {public}")]).validate().unwrap();
        for (lines, expected) in [
            (
                vec![format!("p@x {public}"), "p@x ssh-ed25519 AAAA".into()],
                "module policy: sources[1]: allowedSigners[1]: the key does not parse",
            ),
            (
                vec![format!("p@x namespaces=\"file\" {public}")],
                "module policy: sources[1]: allowedSigners[0]: its namespaces option does not include \"git\"",
            ),
        ] {
            let err = policy(lines).validate().unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
        let deny = ModulePolicy {
            sources: vec![SourceRule {
                pattern: "x".into(),
                deny: true,
                allowed_signers: vec![format!("p@x {public}")],
                ..SourceRule::default()
            }],
        };
        assert!(
            deny.validate()
                .unwrap_err()
                .to_string()
                .ends_with("a deny rule has no allowedSigners")
        );
        let parsed: ModulePolicy = serde_json::from_value(serde_json::json!({
            "sources": [{"pattern": "git+https://*", "allowedSigners": [format!("p@x {public}")]}]
        }))
        .unwrap();
        assert_eq!(parsed.sources[0].allowed_signers.len(), 1);
    }

    #[test]
    fn a_git_signature_counts_only_by_an_allowed_signer_in_the_git_namespace_over_this_content() {
        let ours = ssh_key(ssh_key::Algorithm::Ed25519);
        let ours_ecdsa = ssh_key(ssh_key::Algorithm::Ecdsa {
            curve: ssh_key::EcdsaCurve::NistP256,
        });
        let theirs = ssh_key(ssh_key::Algorithm::Ed25519);
        let only_files = ssh_key(ssh_key::Algorithm::Ed25519);
        let commit = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <a@x> 1700000000 +0000\ncommitter a <a@x> 1700000000 +0000\n\nplatform 1.0.0\n";
        let tampered = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor a <a@x> 1700000000 +0000\ncommitter a <a@x> 1700000000 +0000\n\nplatform 1.0.1\n";
        let allowed = [
            line_of(&ours, "platform@acme.example", ""),
            line_of(&ours_ecdsa, "release@acme.example", "namespaces=\"git\""),
            line_of(&only_files, "files@acme.example", "namespaces=\"file\""),
            "a line that does not parse is skipped".to_string(),
        ];
        let fingerprint = |k: &ssh_key::PrivateKey| {
            k.public_key()
                .fingerprint(ssh_key::HashAlg::Sha256)
                .to_string()
        };
        let pgp =
            b"-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n-----END PGP SIGNATURE-----\n"
                .to_vec();
        // (signed bytes, signature, Ok(signer) or the start of the refusal)
        type Case<'a> = (&'a [u8], Vec<u8>, Result<GitSigner, String>);
        let cases: [Case<'_>; 8] = [
            (
                commit,
                ssh_sign(&ours, "git", commit),
                Ok(GitSigner {
                    fingerprint: fingerprint(&ours),
                    principal: "platform@acme.example".into(),
                }),
            ),
            (
                commit,
                ssh_sign(&ours_ecdsa, "git", commit),
                Ok(GitSigner {
                    fingerprint: fingerprint(&ours_ecdsa),
                    principal: "release@acme.example".into(),
                }),
            ),
            (
                commit,
                ssh_sign(&theirs, "git", commit),
                Err(format!(
                    "signed by key {}, which no allowedSigners line of the policy lists",
                    fingerprint(&theirs)
                )),
            ),
            (
                commit,
                ssh_sign(&ours, "file", commit),
                Err(format!(
                    "the signature by key {} was made in the namespace \"file\", not \"git\"",
                    fingerprint(&ours)
                )),
            ),
            (
                tampered,
                ssh_sign(&ours, "git", commit),
                Err(format!(
                    "the signature by key {} (platform@acme.example) does not match the content",
                    fingerprint(&ours)
                )),
            ),
            (
                commit,
                ssh_sign(&only_files, "git", commit),
                Err(format!(
                    "signed by key {} (files@acme.example), whose namespaces option does not include git",
                    fingerprint(&only_files)
                )),
            ),
            (commit, pgp, Err("signed with GPG (OpenPGP)".into())),
            (
                commit,
                b"-----BEGIN SSH SIGNATURE-----\nnot base64\n-----END SSH SIGNATURE-----\n"
                    .to_vec(),
                Err("the SSH signature does not parse".into()),
            ),
        ];
        for (i, (data, signature, expected)) in cases.into_iter().enumerate() {
            let got = verify_git_signature(data, &signature, &allowed);
            match expected {
                Ok(signer) => assert_eq!(got, Ok(signer), "case {i}"),
                Err(start) => {
                    let message = got.expect_err("refused");
                    assert!(message.starts_with(&start), "case {i}: {message}");
                }
            }
        }
        // The signer as the status names it.
        let signer =
            verify_git_signature(commit, &ssh_sign(&ours, "git", commit), &allowed).unwrap();
        assert_eq!(
            signer.to_string(),
            format!("{} (platform@acme.example)", fingerprint(&ours))
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
