//! Git references to platform modules (`spec.platformRef.git`): which repository, which
//! branch, tag or commit, and which directory of it holds the module. Parsing only; fetching is
//! the runtime's (`cuebe::remote`), so this crate stays free of network code.
//!
//! Forms:
//!
//! - `git+https://HOST/REPO?ref=REF&dir=PATH`: the usual one (HTTPS, anonymous);
//! - `git+file:///PATH/TO/REPO?ref=REF`: a repository on the operator's file system;
//! - `git://HOST/REPO?ref=REF`: git's own unencrypted protocol, on loopback only (as plain HTTP
//!   is for OCI registries).
//!
//! `ref` is a branch, a tag (`refs/heads/…` and `refs/tags/…` say which when a name is both) or
//! a full 40-hex commit sha; `dir` is the module's directory inside the repository (default:
//! the root).
use std::fmt;

/// How a repository is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GitScheme {
    /// `git+https://` (fetched over `https://`).
    Https,
    /// `git+file://` (a local repository, `file://`).
    File,
    /// `git://` (git's daemon protocol; loopback only).
    Git,
}

impl GitScheme {
    /// How the scheme is written in a reference (`git+https`, `git+file`, `git`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Https => "git+https",
            Self::File => "git+file",
            Self::Git => "git",
        }
    }
}

/// A git repository: what a source policy matches and what the module cache is keyed by.
///
/// ```
/// use cuebe_core::module::GitReference;
/// let r = GitReference::parse("git+https://git.example.com/platform/modules.git?ref=main").unwrap();
/// assert_eq!(r.repository.to_string(), "git+https://git.example.com/platform/modules.git");
/// assert_eq!(r.repository.fetch_url(), "https://git.example.com/platform/modules.git");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GitRepository {
    /// The scheme.
    pub scheme: GitScheme,
    /// `host[:port]`; empty for `git+file`.
    pub host: String,
    /// The path, starting with `/`.
    pub path: String,
}

impl GitRepository {
    /// The URL a git client fetches: `https://…`, `file://…` or `git://…`.
    ///
    /// ```
    /// use cuebe_core::module::GitReference;
    /// let r = GitReference::parse("git+file:///srv/git/platform.git?ref=v1.0.0").unwrap();
    /// assert_eq!(r.repository.fetch_url(), "file:///srv/git/platform.git");
    /// ```
    pub fn fetch_url(&self) -> String {
        let scheme = match self.scheme {
            GitScheme::Https => "https",
            GitScheme::File => "file",
            GitScheme::Git => "git",
        };
        format!("{scheme}://{}{}", self.host, self.path)
    }
}

impl fmt::Display for GitRepository {
    /// `git+https://HOST/REPO`: the string a source policy's patterns match.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme.prefix(), self.host, self.path)
    }
}

/// What `ref` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GitRevision {
    /// A full commit sha (40 lowercase hex): fixed content, like an OCI digest.
    Commit(String),
    /// A branch or tag (short, or `refs/heads/…` / `refs/tags/…`): it moves, so it is
    /// resolved to a commit again from time to time.
    Name(String),
}

impl fmt::Display for GitRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Commit(sha) | Self::Name(sha) => f.write_str(sha),
        }
    }
}

/// A parsed `spec.platformRef.git`.
///
/// ```
/// use cuebe_core::module::{GitReference, GitRevision};
/// let r = GitReference::parse("git+https://git.example.com/acme/platform?ref=main&dir=modules/web").unwrap();
/// assert_eq!(r.repository.host, "git.example.com");
/// assert_eq!(r.revision, GitRevision::Name("main".into()));
/// assert_eq!(r.dir, "modules/web");
/// let err = GitReference::parse("git+https://git.example.com/acme/platform").unwrap_err();
/// assert!(err.to_string().starts_with("spec.platformRef.git: names no ref"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GitReference {
    /// The repository.
    pub repository: GitRepository,
    /// The branch, tag or commit.
    pub revision: GitRevision,
    /// The module's directory inside the repository, without leading or trailing `/`; empty
    /// for the root.
    pub dir: String,
}

impl fmt::Display for GitReference {
    /// The spec's form, `git+https://HOST/REPO?ref=REF[&dir=PATH]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}?ref={}", self.repository, self.revision)?;
        if !self.dir.is_empty() {
            write!(f, "&dir={}", self.dir)?;
        }
        Ok(())
    }
}

/// A `spec.platformRef.git` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "spec.platformRef.git: {reason}: {reference:?} (expected git+https://HOST/REPO?ref=BRANCH|TAG|COMMIT[&dir=PATH])"
)]
pub struct InvalidGitReference {
    /// What was given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A git reference resolved to a commit: `git+https://HOST/REPO@<commit>[?dir=PATH]`, what
/// `status.platformRefResolved` shows and what an instance falls back to from the cache.
///
/// ```
/// use cuebe_core::module::{GitReference, ResolvedGitReference};
/// let r = GitReference::parse("git+https://git.example.com/acme/platform?ref=main&dir=web").unwrap();
/// let resolved = r.resolved("0123456789abcdef0123456789abcdef01234567");
/// let text = resolved.to_string();
/// assert_eq!(text, "git+https://git.example.com/acme/platform@0123456789abcdef0123456789abcdef01234567?dir=web");
/// assert_eq!(ResolvedGitReference::parse(&text), Some(resolved));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedGitReference {
    /// The repository.
    pub repository: GitRepository,
    /// The commit (40 lowercase hex).
    pub commit: String,
    /// The module's directory (empty for the root).
    pub dir: String,
}

impl fmt::Display for ResolvedGitReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.commit)?;
        if !self.dir.is_empty() {
            write!(f, "?dir={}", self.dir)?;
        }
        Ok(())
    }
}

impl ResolvedGitReference {
    /// Parses the canonical form [`Display`](fmt::Display) writes; `None` for anything else
    /// (an OCI reference, an embedded module's digest).
    pub fn parse(text: &str) -> Option<Self> {
        let (rest, dir) = match text.split_once("?dir=") {
            Some((rest, dir)) => (rest, dir),
            None => (text, ""),
        };
        let (repository, commit) = rest.rsplit_once('@')?;
        // The same checks as the spec's form: a status is only ever written from a parsed one.
        let spec_form = if dir.is_empty() {
            format!("{repository}?ref={commit}")
        } else {
            format!("{repository}?ref={commit}&dir={dir}")
        };
        let reference = GitReference::parse(&spec_form).ok()?;
        match reference.revision {
            GitRevision::Commit(commit) => Some(Self {
                repository: reference.repository,
                commit,
                dir: reference.dir,
            }),
            GitRevision::Name(_) => None,
        }
    }
}

/// Characters a repository path, a ref or a directory may hold: enough for real repositories,
/// nothing a URL would have to escape, so that one repository has one spelling for the policy.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-/~".contains(c)
}

fn is_commit(text: &str) -> bool {
    text.len() == 40
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl GitReference {
    /// Parses `git+https://HOST/REPO?ref=REF&dir=PATH` (and `git+file:///PATH?…`,
    /// `git://HOST/REPO?…` on loopback). Errors name the field and what is wrong.
    ///
    /// ```
    /// use cuebe_core::module::{GitReference, GitRevision};
    /// let r = GitReference::parse("git://127.0.0.1:9418/platform.git?ref=0123456789abcdef0123456789abcdef01234567").unwrap();
    /// assert!(matches!(r.revision, GitRevision::Commit(_)));
    /// assert_eq!(GitReference::parse("git://git.example.com/p?ref=main").unwrap_err().reason,
    ///     "git:// is unencrypted and allowed on loopback only; use git+https://");
    /// ```
    pub fn parse(reference: &str) -> Result<Self, InvalidGitReference> {
        let bad = |reason| InvalidGitReference {
            reference: reference.to_string(),
            reason,
        };
        let (scheme, rest) = if let Some(rest) = reference.strip_prefix("git+https://") {
            (GitScheme::Https, rest)
        } else if let Some(rest) = reference.strip_prefix("git+file://") {
            (GitScheme::File, rest)
        } else if let Some(rest) = reference.strip_prefix("git://") {
            (GitScheme::Git, rest)
        } else if reference.starts_with("git+http://") {
            return Err(bad("plain http is not allowed; use git+https://"));
        } else if reference.starts_with("git+ssh://") || reference.starts_with("ssh://") {
            return Err(bad(
                "ssh is not supported (fetches are anonymous); use git+https://",
            ));
        } else {
            return Err(bad("must start with git+https://, git+file:// or git://"));
        };
        if reference.contains('#') {
            return Err(bad("must not carry a fragment (#)"));
        }
        if reference.chars().any(char::is_whitespace) {
            return Err(bad("must not contain whitespace"));
        }
        let (location, query) = rest
            .split_once('?')
            .ok_or_else(|| bad("names no ref (?ref=BRANCH, TAG or COMMIT)"))?;
        let (host, path) = match location.find('/') {
            Some(at) => location.split_at(at),
            None => (location, ""),
        };
        match scheme {
            GitScheme::File if !host.is_empty() => {
                return Err(bad("a git+file URL has no host: git+file:///PATH/TO/REPO"));
            }
            GitScheme::File => {}
            _ if host.is_empty() => return Err(bad("names no host")),
            _ => {
                if host.contains('@') {
                    return Err(bad("must not carry credentials (fetches are anonymous)"));
                }
                // The policy matches this string, so it must be the host that is contacted,
                // spelled one way.
                if host != host.to_ascii_lowercase() {
                    return Err(bad("the host must be lowercase"));
                }
                if !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
                {
                    return Err(bad("the host has a character a host name cannot have"));
                }
                if scheme == GitScheme::Https && host.ends_with(":443") {
                    return Err(bad("leave out :443 (HTTPS is the default)"));
                }
                if scheme == GitScheme::Git && !is_loopback(host) {
                    return Err(bad(
                        "git:// is unencrypted and allowed on loopback only; use git+https://",
                    ));
                }
            }
        }
        if path.len() <= 1 {
            return Err(bad("names no repository"));
        }
        if path.contains('@') {
            return Err(bad("the repository path must not contain @"));
        }
        if !path.chars().all(plain)
            || path.ends_with('/')
            || path
                .split('/')
                .skip(1)
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad(
                "the repository path may hold only letters, digits, '.', '_', '-', '~' and '/', with no empty, '.' or '..' segment and no trailing '/'",
            ));
        }
        let mut git_ref: Option<&str> = None;
        let mut dir: Option<&str> = None;
        for pair in query.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("the query must be key=value pairs (ref, dir)"))?;
            let slot = match key {
                "ref" => &mut git_ref,
                "dir" => &mut dir,
                _ => return Err(bad("unknown parameter (only ref and dir)")),
            };
            if slot.replace(value).is_some() {
                return Err(bad("a parameter is given twice"));
            }
        }
        let git_ref = git_ref.ok_or_else(|| bad("names no ref (?ref=BRANCH, TAG or COMMIT)"))?;
        let revision = parse_revision(git_ref).map_err(bad)?;
        let dir = match dir {
            None => String::new(),
            Some(dir) => {
                if dir.is_empty()
                    || !dir.chars().all(plain)
                    || dir.starts_with('/')
                    || dir.ends_with('/')
                    || dir
                        .split('/')
                        .any(|s| s.is_empty() || s == "." || s == "..")
                {
                    return Err(bad(
                        "dir must be a relative path inside the repository (letters, digits, '.', '_', '-', '~', '/'; no '.' or '..' segment, no leading or trailing '/'); leave it out for the root",
                    ));
                }
                dir.to_string()
            }
        };
        Ok(Self {
            repository: GitRepository {
                scheme,
                host: host.to_string(),
                path: path.to_string(),
            },
            revision,
            dir,
        })
    }

    /// This reference at `commit`.
    pub fn resolved(&self, commit: impl Into<String>) -> ResolvedGitReference {
        ResolvedGitReference {
            repository: self.repository.clone(),
            commit: commit.into(),
            dir: self.dir.clone(),
        }
    }
}

fn parse_revision(git_ref: &str) -> Result<GitRevision, &'static str> {
    if git_ref.is_empty() {
        return Err("ref is empty");
    }
    if is_commit(git_ref) {
        return Ok(GitRevision::Commit(git_ref.to_string()));
    }
    if git_ref.len() == 64 && git_ref.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("SHA-256 repositories are not supported; give a 40-hex SHA-1 commit");
    }
    if git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a commit must be 40 lowercase hex characters");
    }
    // git's own rules for ref names (git check-ref-format), narrowed to `plain` characters.
    if !git_ref.chars().all(plain)
        || git_ref.starts_with(['-', '/', '.'])
        || git_ref.ends_with(['/', '.'])
        || git_ref.ends_with(".lock")
        || git_ref.contains("..")
        || git_ref.contains("//")
        || git_ref.contains("/.")
        || git_ref == "HEAD"
    {
        return Err(
            "ref must be a branch or tag name (letters, digits, '.', '_', '-', '~', '/') or a full commit sha",
        );
    }
    if let Some(rest) = git_ref.strip_prefix("refs/")
        && !(rest.starts_with("heads/") || rest.starts_with("tags/"))
    {
        return Err("a full ref name must be refs/heads/… or refs/tags/…");
    }
    Ok(GitRevision::Name(git_ref.to_string()))
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback(host: &str) -> bool {
    let name = host
        .rsplit_once(':')
        .filter(|(h, port)| !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn git_references_name_a_repository_a_ref_and_a_directory() {
        // (reference, repository as the policy sees it, fetch URL, revision, dir)
        let ok: [(&str, &str, &str, GitRevision, &str); 7] = [
            (
                "git+https://github.com/acme/platform?ref=main",
                "git+https://github.com/acme/platform",
                "https://github.com/acme/platform",
                GitRevision::Name("main".into()),
                "",
            ),
            (
                "git+https://git.example.com:8443/acme/platform.git?dir=modules/web&ref=v1.2.0",
                "git+https://git.example.com:8443/acme/platform.git",
                "https://git.example.com:8443/acme/platform.git",
                GitRevision::Name("v1.2.0".into()),
                "modules/web",
            ),
            (
                &format!("git+https://github.com/acme/platform?ref={SHA}"),
                "git+https://github.com/acme/platform",
                "https://github.com/acme/platform",
                GitRevision::Commit(SHA.into()),
                "",
            ),
            (
                "git+https://github.com/Acme/Platform?ref=refs/tags/release/1.0",
                "git+https://github.com/Acme/Platform",
                "https://github.com/Acme/Platform",
                GitRevision::Name("refs/tags/release/1.0".into()),
                "",
            ),
            (
                "git+file:///tmp/.tmpAb12/platform.git?ref=main&dir=cue/platform",
                "git+file:///tmp/.tmpAb12/platform.git",
                "file:///tmp/.tmpAb12/platform.git",
                GitRevision::Name("main".into()),
                "cue/platform",
            ),
            (
                "git://127.0.0.1:9418/platform.git?ref=main",
                "git://127.0.0.1:9418/platform.git",
                "git://127.0.0.1:9418/platform.git",
                GitRevision::Name("main".into()),
                "",
            ),
            (
                "git://localhost/platform?ref=feature/x-1",
                "git://localhost/platform",
                "git://localhost/platform",
                GitRevision::Name("feature/x-1".into()),
                "",
            ),
        ];
        for (reference, repository, url, revision, dir) in ok {
            let parsed = GitReference::parse(reference).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.repository.to_string(), repository, "{reference}");
            assert_eq!(parsed.repository.fetch_url(), url, "{reference}");
            assert_eq!(parsed.revision, revision, "{reference}");
            assert_eq!(parsed.dir, dir, "{reference}");
        }
    }

    #[test]
    fn a_bad_git_reference_names_what_is_wrong() {
        let cases: [(&str, &str); 24] = [
            (
                "https://github.com/acme/platform?ref=main",
                "must start with git+https://, git+file:// or git://",
            ),
            (
                "git+http://github.com/acme/platform?ref=main",
                "plain http is not allowed; use git+https://",
            ),
            (
                "git+ssh://git@github.com/acme/platform?ref=main",
                "ssh is not supported (fetches are anonymous); use git+https://",
            ),
            (
                "git+https://github.com/acme/platform",
                "names no ref (?ref=BRANCH, TAG or COMMIT)",
            ),
            (
                "git+https://github.com/acme/platform?dir=web",
                "names no ref (?ref=BRANCH, TAG or COMMIT)",
            ),
            (
                "git+https://github.com/acme/platform?ref=main#frag",
                "must not carry a fragment (#)",
            ),
            (
                "git+https://github.com/acme/platform?ref=main&depth=1",
                "unknown parameter (only ref and dir)",
            ),
            (
                "git+https://github.com/acme/platform?ref=main&ref=dev",
                "a parameter is given twice",
            ),
            (
                "git+https://github.com/acme/platform?ref",
                "the query must be key=value pairs (ref, dir)",
            ),
            ("git+https://github.com/acme/platform?ref=", "ref is empty"),
            (
                "git+https://user:token@github.com/acme/platform?ref=main",
                "must not carry credentials (fetches are anonymous)",
            ),
            (
                "git+https://GitHub.com/acme/platform?ref=main",
                "the host must be lowercase",
            ),
            (
                "git+https://github.com:443/acme/platform?ref=main",
                "leave out :443 (HTTPS is the default)",
            ),
            ("git+https://github.com?ref=main", "names no repository"),
            ("git+https:///acme/platform?ref=main", "names no host"),
            (
                "git+file://host/srv/platform?ref=main",
                "a git+file URL has no host: git+file:///PATH/TO/REPO",
            ),
            (
                "git://git.example.com/platform?ref=main",
                "git:// is unencrypted and allowed on loopback only; use git+https://",
            ),
            (
                "git+https://github.com/acme/../platform?ref=main",
                "the repository path may hold only letters, digits, '.', '_', '-', '~' and '/', with no empty, '.' or '..' segment and no trailing '/'",
            ),
            (
                "git+https://github.com/acme/platform?ref=main&dir=../etc",
                "dir must be a relative path inside the repository (letters, digits, '.', '_', '-', '~', '/'; no '.' or '..' segment, no leading or trailing '/'); leave it out for the root",
            ),
            (
                "git+https://github.com/acme/platform?ref=main&dir=/web",
                "dir must be a relative path inside the repository (letters, digits, '.', '_', '-', '~', '/'; no '.' or '..' segment, no leading or trailing '/'); leave it out for the root",
            ),
            (
                "git+https://github.com/acme/platform?ref=-main",
                "ref must be a branch or tag name (letters, digits, '.', '_', '-', '~', '/') or a full commit sha",
            ),
            (
                "git+https://github.com/acme/platform?ref=refs/pull/1/head",
                "a full ref name must be refs/heads/… or refs/tags/…",
            ),
            (
                &format!(
                    "git+https://github.com/acme/platform?ref={}",
                    SHA.to_uppercase()
                ),
                "a commit must be 40 lowercase hex characters",
            ),
            (
                &format!(
                    "git+https://github.com/acme/platform?ref={SHA}{}",
                    &SHA[..24]
                ),
                "SHA-256 repositories are not supported; give a 40-hex SHA-1 commit",
            ),
        ];
        for (reference, reason) in cases {
            let err = GitReference::parse(reference).expect_err(reference);
            assert_eq!(err.reason, reason, "{reference}");
            assert!(
                err.to_string().starts_with("spec.platformRef.git: "),
                "{err}"
            );
        }
    }

    #[test]
    fn a_resolved_git_reference_round_trips_and_is_told_from_others() {
        let at_root = GitReference::parse("git+file:///srv/platform.git?ref=main")
            .unwrap()
            .resolved(SHA);
        assert_eq!(
            at_root.to_string(),
            format!("git+file:///srv/platform.git@{SHA}")
        );
        let in_dir = GitReference::parse("git://127.0.0.1:9418/p.git?ref=v1&dir=cue/platform")
            .unwrap()
            .resolved(SHA);
        assert_eq!(
            in_dir.to_string(),
            format!("git://127.0.0.1:9418/p.git@{SHA}?dir=cue/platform")
        );
        for resolved in [at_root, in_dir] {
            assert_eq!(
                ResolvedGitReference::parse(&resolved.to_string()),
                Some(resolved)
            );
        }
        for other in [
            "sha256:602bec774d6b83f7866f4a5f32ce39764383183940408a10dfaa4aa75912d0f6",
            "oci://127.0.0.1:5000/platform@sha256:602bec774d6b83f7866f4a5f32ce39764383183940408a10dfaa4aa75912d0f6",
            "git+https://github.com/acme/platform@main",
            "",
        ] {
            assert_eq!(ResolvedGitReference::parse(other), None, "{other}");
        }
    }
}
