//! The admission webhook's flags on `run` (the contract the Helm chart fills in) and what they
//! make of [`cuebe::admission::AdmissionWebhook`].
use std::net::SocketAddr;
use std::path::PathBuf;

use cuebe::admission::{AdmissionWebhook, FailurePolicy};

/// `--webhook-*`: serve the validating admission webhook.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WebhookArgs {
    /// Serve the validating admission webhook over HTTPS on ADDR, e.g. 0.0.0.0:9443: the API
    /// server asks it before storing an instance, and `kubectl apply` prints what the platform
    /// refuses (default: not served).
    #[arg(long, value_name = "ADDR")]
    pub webhook_bind: Option<SocketAddr>,
    /// The Service in front of the webhook, NAMESPACE/NAME: the names its certificate holds
    /// (NAME.NAMESPACE.svc and NAME.NAMESPACE.svc.cluster.local).
    #[arg(long, value_name = "NS/NAME", requires = "webhook_bind")]
    pub webhook_service: Option<String>,
    /// The ValidatingWebhookConfiguration whose caBundle the operator keeps current (made by the
    /// Helm chart); with --webhook-url the operator writes all of it.
    #[arg(long, value_name = "NAME", requires = "webhook_bind")]
    pub webhook_config: Option<String>,
    /// Keep the webhook's CA in this Secret (in $POD_NAMESPACE, else the Service's namespace),
    /// shared by the replicas and rotated before expiry (default: a CA of this process alone).
    #[arg(
        long,
        value_name = "NAME",
        requires = "webhook_bind",
        conflicts_with = "webhook_cert_dir"
    )]
    pub webhook_secret: Option<String>,
    /// Serve tls.crt and tls.key from DIR (a cert-manager Certificate's Secret), reloaded when
    /// they change, instead of the operator's own CA.
    #[arg(long, value_name = "DIR", requires = "webhook_bind")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Write the whole --webhook-config, the API server calling `URL/validate/<plural>.<group>`:
    /// for an operator running outside the cluster.
    #[arg(long, value_name = "URL", requires = "webhook_config")]
    pub webhook_url: Option<String>,
    /// What the API server does when the webhook does not answer, with --webhook-url: Ignore
    /// (admit; the status reports violations later) or Fail.
    #[arg(long, value_name = "POLICY", default_value = "Ignore")]
    pub webhook_failure_policy: FailurePolicy,
}

impl WebhookArgs {
    /// The webhook these flags describe, bound, or `None` without `--webhook-bind`.
    pub async fn webhook(&self) -> Result<Option<AdmissionWebhook>, String> {
        let Some(addr) = self.webhook_bind else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--webhook-bind {addr}: {e}"))?;
        let service = match &self.webhook_service {
            Some(s) => Some(
                s.split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                    .ok_or_else(|| format!("--webhook-service {s:?}: expected NAMESPACE/NAME"))?,
            ),
            None => None,
        };
        let mut webhook = match &self.webhook_cert_dir {
            Some(dir) => AdmissionWebhook::from_cert_dir(listener, dir),
            None => {
                let mut hosts = Vec::new();
                if let Some((ns, name)) = service {
                    hosts.push(format!("{name}.{ns}.svc"));
                    hosts.push(format!("{name}.{ns}.svc.cluster.local"));
                }
                if let Some(url) = &self.webhook_url {
                    hosts.push(host_of(url)?);
                }
                if hosts.is_empty() {
                    return Err("--webhook-bind: give --webhook-service (in a cluster) or --webhook-url (outside), the names the certificate must hold".into());
                }
                AdmissionWebhook::self_signed(listener, hosts)
            }
        };
        if let Some(secret) = &self.webhook_secret {
            let namespace = std::env::var("POD_NAMESPACE")
                .ok()
                .or_else(|| service.map(|(ns, _)| ns.to_string()))
                .ok_or("--webhook-secret: set $POD_NAMESPACE or give --webhook-service NS/NAME")?;
            webhook = webhook.share_certificates_in(&namespace, secret);
        }
        if let Some(config) = &self.webhook_config {
            webhook = match &self.webhook_url {
                Some(url) => webhook.register(config, url, self.webhook_failure_policy),
                None => webhook.keep_ca_bundle_of(config),
            };
        }
        Ok(Some(webhook))
    }
}

/// The host of `https://HOST[:PORT][/…]` (an IP address or a DNS name).
fn host_of(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("--webhook-url {url:?}: must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return Err(format!("--webhook-url {url:?}: no host"));
    }
    Ok(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_certificate_names_the_host_of_the_url() {
        let cases = [
            ("https://127.0.0.1:9443", Ok("127.0.0.1")),
            (
                "https://webhook.example.com/base",
                Ok("webhook.example.com"),
            ),
            ("https://[::1]:9443", Ok("::1")),
            ("http://127.0.0.1:9443", Err("must start with https://")),
            ("https://:9443", Err("no host")),
        ];
        for (url, expected) in cases {
            match (host_of(url), expected) {
                (Ok(host), Ok(want)) => assert_eq!(host, want),
                (Err(e), Err(want)) => assert!(e.contains(want), "{e}"),
                (got, want) => panic!("{url}: {got:?}, expected {want:?}"),
            }
        }
    }
}
