//! The validating admission webhook: the API server asks the operator before it stores an
//! instance, and `kubectl apply` prints what the platform refuses — the field, the rule, the
//! message — instead of the developer finding it later in the status.
//!
//! Owns: [`AdmissionWebhook`] (where it listens, where its certificate comes from, which
//! `ValidatingWebhookConfiguration` it keeps current), the HTTPS server, and the webhook's own
//! certificate authority. What is refused is decided by [`cuebe_core::admission::verdict`]; the
//! controller renders the instance for it (no cluster reads, under a time limit).
//!
//! Certificates: by default the operator is its own CA. With
//! [`AdmissionWebhook::share_certificates_in`] the CA lives in a Secret every replica reads, so
//! each replica's serving certificate chains to the one `caBundle`; the CA is valid a year and
//! replaced when 90 days are left (the bundle keeps the previous CA until it expires), serving
//! certificates live 30 days and are reissued after 10, all checked every 10 minutes without a
//! restart. With [`AdmissionWebhook::from_cert_dir`] a certificate another tool writes
//! (cert-manager's `tls.crt`/`tls.key`) is served and reloaded when it changes.
//!
//! Failure policy: `Ignore` by default, so an operator outage never blocks developers; the
//! status still reports violations once the operator is back.
//!
//! ```no_run
//! # async fn f(client: kube::Client) -> std::io::Result<()> {
//! use cuebe::admission::{AdmissionWebhook, FailurePolicy};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9443").await?;
//! let webhook = AdmissionWebhook::self_signed(listener, vec!["127.0.0.1".into()])
//!     .register("webservice-operator", "https://127.0.0.1:9443", FailurePolicy::Ignore);
//! # let _ = webhook; Ok(()) }
//! ```
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use cuebe_core::admission::{AdmissionVerdict, verdict};

/// What the API server does when the webhook does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit (the status reports violations later). The default: an operator outage never
    /// blocks developers.
    #[default]
    Ignore,
    /// Refuse everything while the webhook cannot answer.
    Fail,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ignore => "Ignore",
            Self::Fail => "Fail",
        }
    }
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Ignore" => Ok(Self::Ignore),
            "Fail" => Ok(Self::Fail),
            other => Err(format!("{other:?}: expected Ignore or Fail")),
        }
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
enum Certificates {
    /// The operator's own CA, in memory or shared in a Secret (`namespace`, `name`).
    SelfSigned {
        hosts: Vec<String>,
        secret: Option<(String, String)>,
    },
    /// `tls.crt` and `tls.key` in a directory (cert-manager), read every `check_every` and
    /// served anew when they change.
    Directory { dir: PathBuf, check_every: Duration },
}

/// The `ValidatingWebhookConfiguration` the operator keeps current.
#[derive(Debug, Clone)]
struct Configuration {
    name: String,
    /// Write the whole configuration, calling `base URL` + `/validate/<plural>.<group>` (an
    /// operator outside the cluster, as `dev` runs it); otherwise only the `caBundle` of the
    /// configuration someone else (the Helm chart) made.
    register: Option<(String, FailurePolicy)>,
}

/// The admission webhook's settings; give them to [`crate::controller::Operator::admission_webhook`].
#[derive(Debug)]
pub struct AdmissionWebhook {
    pub(crate) listener: tokio::net::TcpListener,
    certificates: Certificates,
    configuration: Option<Configuration>,
    pub(crate) time_limit: Duration,
}

impl AdmissionWebhook {
    /// Serves on `listener` with a certificate for `hosts` (DNS names or IP addresses, e.g.
    /// `webservice-operator-webhook.cuebe-system.svc`) from the operator's own CA, kept in
    /// memory (see [`AdmissionWebhook::share_certificates_in`] for several replicas).
    pub fn self_signed(listener: tokio::net::TcpListener, hosts: Vec<String>) -> Self {
        Self {
            listener,
            certificates: Certificates::SelfSigned {
                hosts,
                secret: None,
            },
            configuration: None,
            time_limit: Duration::from_secs(2),
        }
    }

    /// Serves the certificate in `dir` (`tls.crt`, `tls.key`: a cert-manager Certificate's
    /// Secret mounted there), read again every minute and served from the next connection on
    /// when it changed; a key that does not match the certificate (a rewrite caught half done)
    /// is not taken, the previous pair is served until the next look. The `caBundle` is then
    /// cert-manager's to write (its CA injector).
    pub fn from_cert_dir(listener: tokio::net::TcpListener, dir: impl Into<PathBuf>) -> Self {
        Self {
            listener,
            certificates: Certificates::Directory {
                dir: dir.into(),
                check_every: DIRECTORY_CHECK_EVERY,
            },
            configuration: None,
            time_limit: Duration::from_secs(2),
        }
    }

    /// Keeps the self-signed CA in the Secret `namespace/name`, created by the first replica
    /// and read by the others, so that every replica's certificate chains to one `caBundle`.
    pub fn share_certificates_in(mut self, namespace: &str, name: &str) -> Self {
        if let Certificates::SelfSigned { secret, .. } = &mut self.certificates {
            *secret = Some((namespace.to_string(), name.to_string()));
        }
        self
    }

    /// Writes the CA into the `caBundle` of every webhook of the configuration `name` (made by
    /// the Helm chart), and again whenever the CA changes.
    pub fn keep_ca_bundle_of(mut self, name: &str) -> Self {
        self.configuration = Some(Configuration {
            name: name.to_string(),
            register: None,
        });
        self
    }

    /// Writes the whole configuration `name` (Server-Side Apply), the API server calling
    /// `base_url` + `/validate/<plural>.<group>`, with `failure_policy`: for an operator that
    /// runs outside the cluster (`dev`, tests).
    pub fn register(mut self, name: &str, base_url: &str, failure_policy: FailurePolicy) -> Self {
        self.configuration = Some(Configuration {
            name: name.to_string(),
            register: Some((base_url.trim_end_matches('/').to_string(), failure_policy)),
        });
        self
    }

    /// How long one admission may render before it is admitted unchecked (default 2 s; the
    /// API server's own timeout is 5 s by default in the chart).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }
}

/// Errors of the webhook's certificates and configuration.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Generating or signing a certificate failed.
    #[error("webhook certificate: {0}")]
    Certificate(String),
    /// Reading the certificate directory failed.
    #[error("webhook certificate {path}: {message}")]
    CertificateFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A request to the API server failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
}

fn certificate_error(e: impl std::fmt::Display) -> WebhookError {
    WebhookError::Certificate(e.to_string())
}

/// The path the API server calls for an abstraction: `/validate/<plural>.<group>`.
pub fn validate_path(plural: &str, group: &str) -> String {
    format!("/validate/{plural}.{group}")
}

/// The `ValidatingWebhookConfiguration` for one abstraction, calling `base_url` (an operator
/// outside the cluster) or the Service `service` (`namespace`, `name`) on 443.
///
/// ```
/// use cuebe::admission::{FailurePolicy, webhook_configuration};
/// let config = webhook_configuration(
///     "webservice-operator", "webservices", "platform.example.com", &["v1alpha1".into()],
///     Some("https://127.0.0.1:9443"), None, FailurePolicy::Ignore, "",
/// );
/// let hook = &config.webhooks.unwrap()[0];
/// assert_eq!(hook.name, "webservices.platform.example.com");
/// assert_eq!(hook.client_config.url.as_deref(),
///            Some("https://127.0.0.1:9443/validate/webservices.platform.example.com"));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn webhook_configuration(
    name: &str,
    plural: &str,
    group: &str,
    versions: &[String],
    base_url: Option<&str>,
    service: Option<(&str, &str)>,
    failure_policy: FailurePolicy,
    ca_bundle_pem: &str,
) -> ValidatingWebhookConfiguration {
    let path = validate_path(plural, group);
    let client_config = WebhookClientConfig {
        ca_bundle: (!ca_bundle_pem.is_empty())
            .then(|| ByteString(ca_bundle_pem.as_bytes().to_vec())),
        url: base_url.map(|u| format!("{}{path}", u.trim_end_matches('/'))),
        service: service.map(|(namespace, name)| ServiceReference {
            namespace: namespace.into(),
            name: name.into(),
            path: Some(path.clone()),
            port: Some(443),
        }),
    };
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: format!("{plural}.{group}"),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some(failure_policy.as_str().into()),
            timeout_seconds: Some(5),
            match_policy: Some("Equivalent".into()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![group.into()]),
                api_versions: Some(versions.to_vec()),
                resources: Some(vec![plural.into()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                scope: Some("Namespaced".into()),
            }]),
            client_config,
            ..Default::default()
        }]),
    }
}

/// The certificate the server presents, swapped in place when it is renewed.
#[derive(Debug)]
struct ServingCertificate(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ServingCertificate {
    fn set(&self, key: Arc<CertifiedKey>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }
}

/// The certificate chain and its key, refused when the key is not the certificate's (a pair
/// read while another tool was rewriting it) or there is no certificate.
fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the key: {e}"))?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map(Arc::new)
        .map_err(|e| format!("the certificate and its key: {e}"))
}

/// How long the CA lives, and how much of it must be left to keep using it.
const CA_LIFETIME: time::Duration = time::Duration::days(365);
const CA_RENEW_BEFORE: time::Duration = time::Duration::days(90);
/// How long a serving certificate lives, and after how long it is reissued.
const SERVING_LIFETIME: time::Duration = time::Duration::days(30);
const SERVING_RENEW_AFTER: time::Duration = time::Duration::days(10);
/// How often certificates and the configuration are looked at.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(600);
/// How often a certificate directory is read (cert-manager renews well before expiry).
const DIRECTORY_CHECK_EVERY: Duration = Duration::from_secs(60);
/// How soon a certificate or configuration that is not ready is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// The operator's CA: its PEM, its key, when it expires, and the previous CA still trusted.
struct Authority {
    cert_pem: String,
    key_pem: String,
    not_after: time::OffsetDateTime,
    previous_pem: Option<(String, time::OffsetDateTime)>,
}

const CA_NAME: &str = "cuebe admission webhook CA";
const NOT_AFTER_KEY: &str = "ca.not-after";
const PREVIOUS_KEY: &str = "previous-ca.crt";
const PREVIOUS_NOT_AFTER_KEY: &str = "previous-ca.not-after";

fn ca_params(not_after: time::OffsetDateTime) -> Result<CertificateParams, WebhookError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(certificate_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.not_before = not_after - CA_LIFETIME;
    params.not_after = not_after;
    Ok(params)
}

impl Authority {
    fn generate(
        now: time::OffsetDateTime,
        previous: Option<&Authority>,
    ) -> Result<Self, WebhookError> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        // Whole seconds: the expiry is stored as RFC 3339 and must round-trip exactly.
        let not_after = (now + CA_LIFETIME)
            .replace_nanosecond(0)
            .map_err(certificate_error)?;
        let cert = ca_params(not_after)?
            .self_signed(&key)
            .map_err(certificate_error)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
            previous_pem: previous
                .filter(|p| p.not_after > now)
                .map(|p| (p.cert_pem.clone(), p.not_after)),
        })
    }

    /// The PEM bundle the API server trusts: this CA and the previous one until it expires.
    fn bundle(&self, now: time::OffsetDateTime) -> String {
        let mut bundle = self.cert_pem.clone();
        if let Some((pem, not_after)) = &self.previous_pem
            && *not_after > now
        {
            bundle.push_str(pem);
        }
        bundle
    }

    /// A serving certificate for `hosts`, signed by this CA.
    fn issue(
        &self,
        hosts: &[String],
        now: time::OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, time::OffsetDateTime), WebhookError> {
        let (cert_pem, key_pem, not_after) = self.issue_pem(hosts, now)?;
        let served = certified_key(&cert_pem, &key_pem).map_err(WebhookError::Certificate)?;
        Ok((served, not_after))
    }

    /// The same as PEM: the certificate, its key and when it expires.
    fn issue_pem(
        &self,
        hosts: &[String],
        now: time::OffsetDateTime,
    ) -> Result<(String, String, time::OffsetDateTime), WebhookError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(certificate_error)?;
        // The issuer is rebuilt from the same name and key: what a leaf chains to.
        let issuer = Issuer::new(ca_params(self.not_after)?, ca_key);
        let key = KeyPair::generate().map_err(certificate_error)?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(certificate_error)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.not_before = now - time::Duration::minutes(5);
        let not_after = (now + SERVING_LIFETIME).min(self.not_after);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &issuer).map_err(certificate_error)?;
        Ok((cert.pem(), key.serialize_pem(), not_after))
    }

    fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        let text = |s: &str| ByteString(s.as_bytes().to_vec());
        let stamp = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let mut data = BTreeMap::from([
            ("ca.crt".to_string(), text(&self.cert_pem)),
            ("ca.key".to_string(), text(&self.key_pem)),
            (NOT_AFTER_KEY.to_string(), text(&stamp(self.not_after))),
        ]);
        if let Some((pem, not_after)) = &self.previous_pem {
            data.insert(PREVIOUS_KEY.into(), text(pem));
            data.insert(PREVIOUS_NOT_AFTER_KEY.into(), text(&stamp(*not_after)));
        }
        data
    }

    fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let time = |key: &str| {
            text(key).and_then(|t| {
                time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
            })
        };
        Some(Self {
            cert_pem: text("ca.crt")?,
            key_pem: text("ca.key")?,
            not_after: time(NOT_AFTER_KEY)?,
            previous_pem: text(PREVIOUS_KEY).zip(time(PREVIOUS_NOT_AFTER_KEY)),
        })
    }
}

/// Keeps the CA (in memory or in the shared Secret) and this replica's serving certificate
/// current, and the configuration's `caBundle`.
struct CertificateKeeper {
    client: kube::Client,
    hosts: Vec<String>,
    secret: Option<(String, String)>,
    serving: Arc<ServingCertificate>,
    authority: Option<Authority>,
    /// When this replica's serving certificate was issued, and by which CA (its PEM).
    issued: Option<(time::OffsetDateTime, String)>,
}

impl CertificateKeeper {
    /// The CA to sign with: the shared Secret's (creating or rotating it), or our own.
    async fn authority(&mut self, now: time::OffsetDateTime) -> Result<(), WebhookError> {
        let fresh = |a: &Authority| a.not_after - now > CA_RENEW_BEFORE;
        let Some((namespace, name)) = self.secret.clone() else {
            if !self.authority.as_ref().is_some_and(fresh) {
                self.authority = Some(Authority::generate(now, self.authority.as_ref())?);
            }
            return Ok(());
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let kube_error = |what: &str| {
            let what = format!("{what} the webhook's Secret {namespace}/{name}");
            move |source| WebhookError::Kube {
                what,
                source: Box::new(source),
            }
        };
        for _attempt in 0..5 {
            let existing = secrets
                .get_opt(&name)
                .await
                .map_err(kube_error("reading"))?;
            let stored = existing.as_ref().and_then(Authority::from_secret);
            if let Some(authority) = stored.filter(fresh) {
                self.authority = Some(authority);
                return Ok(());
            }
            // Missing, unreadable or close to expiry: this replica makes the next CA; a race
            // with another replica is settled by the API server (create conflicts, replace
            // checks the resourceVersion) and the loser reads the winner's.
            let previous = existing.as_ref().and_then(Authority::from_secret);
            let next = Authority::generate(now, previous.as_ref())?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    resource_version: existing
                        .as_ref()
                        .and_then(|s| s.metadata.resource_version.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        "cuebe".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(next.to_secret_data()),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            let written = match existing {
                None => secrets.create(&PostParams::default(), &secret).await,
                Some(_) => {
                    secrets
                        .replace(&name, &PostParams::default(), &secret)
                        .await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %format!("{namespace}/{name}"), "wrote a new admission webhook CA");
                    self.authority = Some(next);
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(kube_error("writing")(e)),
            }
        }
        Err(WebhookError::Certificate(format!(
            "the Secret {namespace}/{name} kept changing while writing a CA"
        )))
    }

    /// Reissues this replica's certificate when it is due or the CA changed.
    async fn maintain(&mut self) -> Result<Option<String>, WebhookError> {
        let now = time::OffsetDateTime::now_utc();
        self.authority(now).await?;
        let Some(authority) = &self.authority else {
            return Ok(None);
        };
        let due = match &self.issued {
            Some((at, ca)) => now - *at > SERVING_RENEW_AFTER || *ca != authority.cert_pem,
            None => true,
        };
        if due {
            let (key, not_after) = authority.issue(&self.hosts, now)?;
            self.serving.set(key);
            self.issued = Some((now, authority.cert_pem.clone()));
            tracing::info!(hosts = ?self.hosts, %not_after, "admission webhook: serving certificate issued");
        }
        Ok(Some(authority.bundle(now)))
    }
}

/// Serves `tls.crt`/`tls.key` from a directory, anew whenever their contents change (a mounted
/// Secret swaps its files; other tools rewrite them in place, possibly keeping their times).
struct DirectoryKeeper {
    dir: PathBuf,
    check_every: Duration,
    serving: Arc<ServingCertificate>,
    /// The certificate and key being served, as read.
    seen: Option<(String, String)>,
}

impl DirectoryKeeper {
    fn maintain(&mut self) -> Result<(), WebhookError> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| WebhookError::CertificateFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        };
        let (cert, key) = (read("tls.crt")?, read("tls.key")?);
        if self
            .seen
            .as_ref()
            .is_some_and(|(c, k)| *c == cert && *k == key)
        {
            return Ok(());
        }
        // Checked before it is served: a key that is not the certificate's would fail every
        // handshake, while the previous pair is still good.
        let served =
            certified_key(&cert, &key).map_err(|message| WebhookError::CertificateFile {
                path: self.dir.display().to_string(),
                message: if self.seen.is_some() {
                    format!("{message} (the previous certificate is still served)")
                } else {
                    message
                },
            })?;
        self.serving.set(served);
        self.seen = Some((cert, key));
        tracing::info!(dir = %self.dir.display(), "admission webhook: certificate loaded");
        Ok(())
    }
}

/// Writes the configuration: the whole of it (registered) or only its `caBundle`.
async fn keep_configuration(
    client: &kube::Client,
    configuration: &Configuration,
    fresh: &ValidatingWebhookConfiguration,
    bundle: &str,
) -> Result<(), WebhookError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let kube_error = |what: &str| {
        let what = format!(
            "{what} the ValidatingWebhookConfiguration {}",
            configuration.name
        );
        move |source| WebhookError::Kube {
            what,
            source: Box::new(source),
        }
    };
    if configuration.register.is_some() {
        api.patch(
            &configuration.name,
            &PatchParams::apply("cuebe-admission").force(),
            &Patch::Apply(fresh),
        )
        .await
        .map_err(kube_error("applying"))?;
        return Ok(());
    }
    for _attempt in 0..5 {
        let Some(mut current) = api
            .get_opt(&configuration.name)
            .await
            .map_err(kube_error("reading"))?
        else {
            tracing::warn!(configuration = %configuration.name, "the webhook configuration does not exist: nothing calls the webhook (is webhook.enabled set in the chart?)");
            return Ok(());
        };
        let wanted = ByteString(bundle.as_bytes().to_vec());
        let mut changed = false;
        for hook in current.webhooks.iter_mut().flatten() {
            if hook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                hook.client_config.ca_bundle = Some(wanted.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        match api
            .replace(&configuration.name, &PostParams::default(), &current)
            .await
        {
            Ok(_) => {
                tracing::info!(configuration = %configuration.name, "admission webhook: caBundle written");
                return Ok(());
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(kube_error("writing")(e)),
        }
    }
    Ok(())
}

/// What the server asks of the controller: a verdict for one object.
pub(crate) type Validate = Arc<
    dyn Fn(DynamicObject) -> futures::future::BoxFuture<'static, AdmissionVerdict> + Send + Sync,
>;

/// What the API server sends about the abstraction, to build the configuration.
pub(crate) struct Served {
    pub plural: String,
    pub group: String,
    pub versions: Vec<String>,
}

/// Runs the webhook until dropped: keeps the certificate and configuration current and
/// answers admission reviews on `/validate/<plural>.<group>`.
pub(crate) async fn serve(
    webhook: AdmissionWebhook,
    client: kube::Client,
    served: Served,
    validate: Validate,
) {
    let serving = Arc::new(ServingCertificate(RwLock::new(None)));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder
            .with_no_client_auth()
            .with_cert_resolver(serving.clone()),
        Err(error) => {
            tracing::error!(%error, "admission webhook: TLS setup failed; not serving");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let path = validate_path(&served.plural, &served.group);
    let maintenance = {
        let serving = serving.clone();
        let client = client.clone();
        let certificates = webhook.certificates.clone();
        let configuration = webhook.configuration.clone();
        async move {
            enum Keeper {
                Own(Box<CertificateKeeper>),
                Dir(DirectoryKeeper),
            }
            let mut keeper = match certificates {
                Certificates::SelfSigned { hosts, secret } => {
                    Keeper::Own(Box::new(CertificateKeeper {
                        client: client.clone(),
                        hosts,
                        secret,
                        serving,
                        authority: None,
                        issued: None,
                    }))
                }
                Certificates::Directory { dir, check_every } => Keeper::Dir(DirectoryKeeper {
                    dir,
                    check_every,
                    serving,
                    seen: None,
                }),
            };
            let mut written_bundle: Option<String> = None;
            loop {
                let bundle = match &mut keeper {
                    Keeper::Own(k) => k.maintain().await,
                    Keeper::Dir(k) => k.maintain().map(|()| None),
                };
                let retry = match bundle {
                    Ok(bundle) => {
                        if let (Some(configuration), Some(bundle)) = (&configuration, &bundle)
                            && written_bundle.as_ref() != Some(bundle)
                        {
                            let fresh = webhook_configuration(
                                &configuration.name,
                                &served.plural,
                                &served.group,
                                &served.versions,
                                configuration.register.as_ref().map(|(url, _)| url.as_str()),
                                None,
                                configuration
                                    .register
                                    .as_ref()
                                    .map(|(_, p)| *p)
                                    .unwrap_or_default(),
                                bundle,
                            );
                            match keep_configuration(&client, configuration, &fresh, bundle).await {
                                Ok(()) => written_bundle = Some(bundle.clone()),
                                Err(error) => {
                                    tracing::warn!(%error, "admission webhook: configuration not updated; retrying")
                                }
                            }
                        }
                        // Again soon while the bundle is not written (none to write from a
                        // directory: cert-manager's injector writes it).
                        configuration.is_some()
                            && bundle.is_some()
                            && written_bundle.as_ref() != bundle.as_ref()
                    }
                    Err(error) => {
                        tracing::warn!(%error, "admission webhook: certificate not ready; retrying");
                        true
                    }
                };
                // A directory's certificate is looked at more often (cert-manager renews).
                let pause = match (&keeper, retry) {
                    (Keeper::Dir(k), true) => k.check_every.min(RETRY_EVERY),
                    (Keeper::Dir(k), false) => k.check_every,
                    (Keeper::Own(_), true) => RETRY_EVERY,
                    (Keeper::Own(_), false) => MAINTENANCE_EVERY,
                };
                tokio::time::sleep(pause).await;
            }
        }
    };
    let _maintenance = AbortOnDrop(tokio::spawn(maintenance));
    let time_limit = webhook.time_limit;
    // Connections live in this set: when the server stops (the operator stops), its open
    // keep-alive connections stop answering too, instead of outliving it.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (stream, _) = match webhook.listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admission webhook: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let validate = validate.clone();
        let path = path.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(
                Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "admission webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let validate = validate.clone();
                let path = path.clone();
                async move { Ok::<_, Infallible>(answer(request, &path, &validate, time_limit).await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admission webhook: connection ended");
            }
        });
    }
}

/// Aborts a spawned task when dropped (the maintenance ends with the server).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The largest review read (the API server's own request limit is 3 MiB).
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

async fn answer(
    request: Request<Incoming>,
    path: &str,
    validate: &Validate,
    time_limit: Duration,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    };
    if request.uri().path() != path || request.method() != hyper::Method::POST {
        return reply(StatusCode::NOT_FOUND, b"{}".to_vec());
    }
    let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("{{\"error\":{:?}}}", error.to_string()).into_bytes(),
            );
        }
    };
    let response = match serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|review| {
            let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
            request.map_err(|e| e.to_string())
        }) {
        Ok(request) => review(request, validate, time_limit).await,
        Err(error) => AdmissionResponse::invalid(error),
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, b"{}".to_vec()),
    }
}

/// Answers one request: unchanged specs and deletions pass (the operator's own finalizer and
/// label writes must never be refused); everything else is rendered.
async fn review(
    request: AdmissionRequest<DynamicObject>,
    validate: &Validate,
    time_limit: Duration,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(&request);
    let Some(object) = request.object.clone() else {
        return response;
    };
    if object.metadata.deletion_timestamp.is_some() {
        return response;
    }
    if let Some(old) = &request.old_object
        && old.data.get("spec") == object.data.get("spec")
    {
        return response;
    }
    let verdict = match tokio::time::timeout(time_limit, validate(object)).await {
        Ok(verdict) => verdict,
        Err(_) => {
            AdmissionVerdict::admit_unchecked(format!("rendering took longer than {time_limit:?}"))
        }
    };
    let mut response = response;
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    match verdict.message {
        Some(message) if !verdict.allowed => response.deny(message),
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An admission review as the API server sends it: the creation of a Greeter.
    fn review_body(uid: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "example.com", "version": "v1", "kind": "Greeter"},
                "resource": {"group": "example.com", "version": "v1", "resource": "greeters"},
                "name": "hi", "namespace": "default", "operation": "CREATE",
                "userInfo": {"username": "developer"},
                "object": {
                    "apiVersion": "example.com/v1", "kind": "Greeter",
                    "metadata": {"name": "hi", "namespace": "default"},
                    "spec": {"message": "hi"},
                },
                "oldObject": null,
            },
        })
    }

    fn request(uid: &str) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_value(review_body(uid)).unwrap();
        review.try_into().unwrap()
    }

    const REFUSAL: &str = "spec.message [polite]: say please";

    /// A validation that refuses every object, after `delay` (a render that takes that long).
    fn refusing_after(delay: Duration) -> Validate {
        Arc::new(move |_object| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                AdmissionVerdict {
                    allowed: false,
                    message: Some(REFUSAL.into()),
                    warnings: Vec::new(),
                }
            })
        })
    }

    #[tokio::test]
    async fn a_render_slower_than_the_time_limit_is_admitted_with_a_warning_that_it_was_not_checked()
     {
        let limit = Duration::from_millis(50);
        // Within the limit, the validation decides.
        let answered = review(request("fast"), &refusing_after(Duration::ZERO), limit).await;
        assert!(!answered.allowed);
        assert_eq!(answered.result.message, REFUSAL);
        // Slower than the limit: admitted when the limit is reached, not when the render ends,
        // with the warning kubectl prints.
        let started = std::time::Instant::now();
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            review(
                request("slow"),
                &refusing_after(Duration::from_secs(30)),
                limit,
            ),
        )
        .await
        .expect("the review waited for the render instead of its time limit");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(answered.uid, "slow");
        assert!(answered.allowed, "{}", answered.result.message);
        assert_eq!(
            answered.warnings,
            Some(vec![
                "not checked at admission: rendering took longer than 50ms (the status reports \
                 it after the object is stored)"
                    .to_string()
            ])
        );
    }

    /// A Secret volume as the kubelet writes it: the files in a folder of their own, `..data`
    /// pointing at it and `tls.crt`, `tls.key` pointing through `..data`; an update writes a
    /// new folder and swaps `..data` in one rename.
    #[cfg(unix)]
    fn mount_secret(dir: &std::path::Path, generation: u32, cert_pem: &str, key_pem: &str) {
        let folder = format!("..generation_{generation}");
        std::fs::create_dir(dir.join(&folder)).unwrap();
        std::fs::write(dir.join(&folder).join("tls.crt"), cert_pem).unwrap();
        std::fs::write(dir.join(&folder).join("tls.key"), key_pem).unwrap();
        std::os::unix::fs::symlink(&folder, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        for file in ["tls.crt", "tls.key"] {
            if std::fs::symlink_metadata(dir.join(file)).is_err() {
                std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file)).unwrap();
            }
        }
        if generation > 1 {
            std::fs::remove_dir_all(dir.join(format!("..generation_{}", generation - 1))).unwrap();
        }
    }

    /// What the API server does, trusting only `ca_pem` (its `caBundle`): a TLS connection to
    /// the webhook and an admission review posted on it; the answer, or why there is none.
    async fn post_review(
        addr: std::net::SocketAddr,
        ca_pem: &str,
        uid: &str,
    ) -> Result<serde_json::Value, String> {
        use rustls::pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string()).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let body = serde_json::to_vec(&review_body(uid)).unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            validate_path("greeters", "example.com"),
            body.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(&body).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        // Read until the server closes (an unclean close after the answer changes nothing).
        let _ = tls.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        let (status, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no answer: {answer:?}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(status.to_string());
        }
        serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
    }

    /// The answer to a client trusting only `ca`, once the webhook serves a certificate of it.
    async fn answered_trusting(
        addr: std::net::SocketAddr,
        ca: &Authority,
        uid: &str,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match post_review(addr, &ca.cert_pem, uid).await {
                Ok(answer) => return answer,
                Err(error) => assert!(
                    std::time::Instant::now() < deadline,
                    "no certificate of that CA served: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread")]
    async fn the_certificate_of_the_directory_is_served_and_a_replaced_one_without_a_restart() {
        let now = time::OffsetDateTime::now_utc();
        let hosts = ["127.0.0.1".to_string()];
        let first_ca = Authority::generate(now, None).unwrap();
        let second_ca = Authority::generate(now, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = first_ca.issue_pem(&hosts, now).unwrap();
        mount_secret(dir.path(), 1, &cert, &key);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut webhook = AdmissionWebhook::from_cert_dir(listener, dir.path());
        // Looked at every 50 ms instead of every minute, to keep the test short.
        webhook.certificates = Certificates::Directory {
            dir: dir.path().into(),
            check_every: Duration::from_millis(50),
        };
        // Never called: there is no configuration to write, and no CA of the operator's.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let served = Served {
            plural: "greeters".into(),
            group: "example.com".into(),
            versions: vec!["v1".into()],
        };
        let _server = AbortOnDrop(tokio::spawn(serve(
            webhook,
            client,
            served,
            refusing_after(Duration::ZERO),
        )));

        // A client trusting only the directory's CA completes a review: the validation's
        // answer comes back for this request. One trusting another CA (of the same name) is
        // refused the handshake.
        let answer = answered_trusting(addr, &first_ca, "first").await;
        assert_eq!(answer["response"]["uid"], "first", "{answer}");
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        assert_eq!(answer["response"]["status"]["message"], REFUSAL, "{answer}");
        let other = post_review(addr, &second_ca.cert_pem, "other").await;
        assert!(
            other
                .as_ref()
                .is_err_and(|e| e.contains("invalid peer certificate")),
            "{other:?}"
        );

        // cert-manager renews (here with another CA) and the kubelet swaps the mounted
        // Secret's files: the new certificate is served by the same server.
        let (cert, key, _) = second_ca.issue_pem(&hosts, now).unwrap();
        mount_secret(dir.path(), 2, &cert, &key);
        let answer = answered_trusting(addr, &second_ca, "second").await;
        assert_eq!(answer["response"]["uid"], "second", "{answer}");
        let old = post_review(addr, &first_ca.cert_pem, "old").await;
        assert!(
            old.as_ref()
                .is_err_and(|e| e.contains("invalid peer certificate")),
            "{old:?}"
        );

        // A tool that rewrites the files in place, the certificate first: until the key
        // follows, the two are not a pair, and the previous pair keeps being served.
        let (cert, key, _) = first_ca.issue_pem(&hosts, now).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
        for attempt in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let answer = post_review(addr, &second_ca.cert_pem, "torn").await;
            assert!(
                answer.is_ok(),
                "attempt {attempt} while the key lags: {answer:?}"
            );
        }
        std::fs::write(dir.path().join("tls.key"), &key).unwrap();
        let answer = answered_trusting(addr, &first_ca, "third").await;
        assert_eq!(answer["response"]["uid"], "third", "{answer}");
    }

    fn day(n: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000 + n)
    }

    #[test]
    fn the_ca_is_replaced_before_expiry_and_the_bundle_trusts_the_previous_one_until_it_expires() {
        let first = Authority::generate(day(0), None).unwrap();
        assert_eq!(first.not_after, day(0) + CA_LIFETIME);
        assert_eq!(first.bundle(day(1)), first.cert_pem);
        // Stored and read back exactly (another replica signs with what it reads).
        let secret = Secret {
            data: Some(first.to_secret_data()),
            ..Default::default()
        };
        let read = Authority::from_secret(&secret).unwrap();
        assert_eq!(
            (&read.cert_pem, &read.key_pem, read.not_after),
            (&first.cert_pem, &first.key_pem, first.not_after)
        );
        // Fresh while more than 90 days are left; the keeper replaces it after that.
        let fresh = |a: &Authority, now: time::OffsetDateTime| a.not_after - now > CA_RENEW_BEFORE;
        assert!(fresh(&first, day(274)));
        assert!(!fresh(&first, day(276)));
        let second = Authority::generate(day(276), Some(&first)).unwrap();
        assert_ne!(second.cert_pem, first.cert_pem);
        let bundle = second.bundle(day(300));
        assert!(bundle.starts_with(&second.cert_pem) && bundle.ends_with(&first.cert_pem));
        // The previous CA leaves the bundle when it expires, and is not carried further.
        assert_eq!(second.bundle(day(366)), second.cert_pem);
        let third = Authority::generate(day(366 + 276), Some(&second)).unwrap();
        assert!(!third.bundle(day(366 + 277)).contains(&first.cert_pem));
        let stored = Secret {
            data: Some(second.to_secret_data()),
            ..Default::default()
        };
        let read = Authority::from_secret(&stored).unwrap();
        assert_eq!(read.previous_pem, second.previous_pem);
    }

    #[test]
    fn a_serving_certificate_is_signed_by_the_ca_for_the_hosts_and_never_outlives_it() {
        let ca = Authority::generate(day(0), None).unwrap();
        let hosts = vec!["web-webhook.ops.svc".to_string(), "127.0.0.1".to_string()];
        let (key, not_after) = ca.issue(&hosts, day(1)).unwrap();
        assert_eq!(not_after, day(1) + SERVING_LIFETIME);
        assert_eq!(key.cert.len(), 1);
        // Verified the way a client does: a root store holding only the bundle.
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.bundle(day(1)).as_bytes())
        {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            day(2).unix_timestamp().unsigned_abs(),
        ));
        for host in ["web-webhook.ops.svc", "127.0.0.1"] {
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
            verifier
                .verify_server_cert(&key.cert[0], &[], &name, &[], at)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("other.ops.svc".to_string()).unwrap();
        assert!(
            verifier
                .verify_server_cert(&key.cert[0], &[], &other, &[], at)
                .is_err()
        );
        // Near the CA's end, a serving certificate ends with it.
        let (_, late) = ca.issue(&hosts, day(360)).unwrap();
        assert_eq!(late, ca.not_after);
    }
}
