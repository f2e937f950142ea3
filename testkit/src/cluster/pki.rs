//! Certificates for a throwaway control plane: a CA, the API server's serving certificate, an
//! admin client certificate (`system:masters`) and the service-account signing key.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::ClusterError;

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (trusted by clients and by the API server for client certificates).
    pub ca_cert: PathBuf,
    /// CA key (the controller-manager signs with it).
    pub ca_key: PathBuf,
    /// API server serving certificate and key.
    pub serving_cert: PathBuf,
    /// API server serving key.
    pub serving_key: PathBuf,
    /// Admin client certificate (CN=cuebe-admin, O=system:masters).
    pub admin_cert: PathBuf,
    /// Admin client key.
    pub admin_key: PathBuf,
    /// Service-account signing key (private, PKCS#8).
    pub sa_key: PathBuf,
    /// Service-account verification key (public).
    pub sa_pub: PathBuf,
}

fn err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Pki(e.to_string())
}

fn write(dir: &Path, name: &str, content: &str) -> Result<PathBuf, ClusterError> {
    let path = dir.join(name);
    std::fs::write(&path, content).map_err(|e| ClusterError::Io {
        what: format!("writing {}", path.display()),
        source: e,
    })?;
    Ok(path)
}

impl Pki {
    /// Generates everything into `dir`.
    pub fn generate(dir: &Path) -> Result<Self, ClusterError> {
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cuebe-test-ca");
        ca_params.distinguished_name = dn;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let ca_pem = ca_cert.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().map_err(err)?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "10.0.0.1".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .map_err(err)?;
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        serving.distinguished_name = dn;
        let serving_cert = serving.signed_by(&serving_key, &issuer).map_err(err)?;

        let admin_key = KeyPair::generate().map_err(err)?;
        let mut admin = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cuebe-admin");
        dn.push(DnType::OrganizationName, "system:masters");
        admin.distinguished_name = dn;
        let admin_cert = admin.signed_by(&admin_key, &issuer).map_err(err)?;

        let sa = KeyPair::generate().map_err(err)?;
        Ok(Self {
            ca_cert: write(dir, "ca.crt", &ca_pem)?,
            ca_key: write(dir, "ca.key", &ca_key_pem)?,
            serving_cert: write(dir, "apiserver.crt", &serving_cert.pem())?,
            serving_key: write(dir, "apiserver.key", &serving_key.serialize_pem())?,
            admin_cert: write(dir, "admin.crt", &admin_cert.pem())?,
            admin_key: write(dir, "admin.key", &admin_key.serialize_pem())?,
            sa_key: write(dir, "sa.key", &sa.serialize_pem())?,
            sa_pub: write(dir, "sa.pub", &sa.public_key_pem())?,
        })
    }
}
