//! Signing a published module the way `cosign sign --key` does, in Rust: an ECDSA P-256 key
//! pair, and the signature pushed under the tag `sha256-<hex>.sig` next to the module (one
//! "simple signing" payload layer, the signature in its `dev.cosignproject.cosign/signature`
//! annotation).
//!
//! ```no_run
//! # async fn f(registry: &cuebe_testkit::oci_registry::LocalRegistry, reference: &str) -> Result<(), String> {
//! let key = cuebe_testkit::cosign::SigningKey::generate();
//! key.sign_module(reference).await?;
//! let policy_key = key.public_pem(); // what the operator's policy lists
//! # Ok(()) }
//! ```
use base64::Engine as _;
use cuebe::trust::{
    COSIGN_PAYLOAD_MEDIA_TYPE, COSIGN_SIGNATURE_ANNOTATION, PublicKey, signature_tag,
    simple_signing_payload,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use sha2::{Digest, Sha256};

/// An ECDSA P-256 signing key (what `cosign generate-key-pair` makes).
#[derive(Debug)]
pub struct SigningKey {
    pair: EcdsaKeyPair,
}

impl SigningKey {
    /// A fresh random key.
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("the system RNG works");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a generated key parses");
        Self { pair }
    }

    /// The public key, PEM (`cosign.pub`).
    pub fn public_pem(&self) -> String {
        PublicKey::pem_of_point(self.pair.public_key().as_ref())
    }

    /// Signs the module `reference` (`oci://HOST/REPO@sha256:…`) pins and pushes the signature
    /// to the same registry under cosign's tag.
    pub async fn sign_module(&self, reference: &str) -> Result<(), String> {
        let pinned = cuebe::module::OciReference::parse(reference).map_err(|e| e.to_string())?;
        let payload = simple_signing_payload(
            &format!("{}/{}", pinned.registry, pinned.repository),
            &pinned.digest,
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), &payload)
            .map_err(|e| e.to_string())?;
        let signature = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
        // Pushed over plain HTTP with the distribution API's monolithic upload (one POST per
        // blob): the testkit's registry is on loopback.
        let base = format!("http://{}/v2/{}", pinned.registry, pinned.repository);
        let config = b"{}".to_vec();
        let config_digest = upload_blob(&base, &config).await?;
        let payload_digest = upload_blob(&base, &payload).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{
                "mediaType": COSIGN_PAYLOAD_MEDIA_TYPE,
                "digest": payload_digest,
                "size": payload.len(),
                "annotations": {COSIGN_SIGNATURE_ANNOTATION: signature},
            }],
        });
        let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let url = format!("{base}/manifests/{}", signature_tag(&pinned.digest));
        let status = send(
            "PUT",
            &url,
            "application/vnd.oci.image.manifest.v1+json",
            body,
        )
        .await?;
        if status != 201 {
            return Err(format!("pushing the signature manifest: HTTP {status}"));
        }
        Ok(())
    }
}

impl SigningKey {
    /// Signs the module `digest` pins as [`SigningKey::sign_module`] does, into the OCI image
    /// layout at `layout` instead of a registry: the payload and config blobs, the signature
    /// manifest, and an `index.json` entry tagged `sha256-<hex>.sig` (the cosign tag), as
    /// `skopeo copy docker://REG/REPO:sha256-<hex>.sig oci:LAYOUT:sha256-<hex>.sig` writes it.
    /// `docker_reference` is the `REGISTRY/REPO` the payload names.
    pub fn sign_layout(
        &self,
        layout: &std::path::Path,
        docker_reference: &str,
        digest: &str,
    ) -> Result<(), String> {
        let payload = simple_signing_payload(docker_reference, digest);
        let signature = self
            .pair
            .sign(&SystemRandom::new(), &payload)
            .map_err(|e| e.to_string())?;
        let signature = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
        let config = b"{}".to_vec();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_of(&config), "size": config.len()},
            "layers": [{
                "mediaType": COSIGN_PAYLOAD_MEDIA_TYPE,
                "digest": sha256_of(&payload),
                "size": payload.len(),
                "annotations": {COSIGN_SIGNATURE_ANNOTATION: signature},
            }],
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        let blobs = layout.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
        for blob in [&config, &payload, &manifest] {
            let name = sha256_of(blob).replace("sha256:", "");
            std::fs::write(blobs.join(name), blob).map_err(|e| e.to_string())?;
        }
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value = std::fs::read(&index_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
        let entry = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256_of(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": signature_tag(digest)},
        });
        index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| format!("{}: no manifests list", index_path.display()))?
            .push(entry);
        std::fs::write(
            &index_path,
            serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn upload_blob(base: &str, bytes: &[u8]) -> Result<String, String> {
    let digest = sha256_of(bytes);
    let url = format!("{base}/blobs/uploads/?digest={digest}");
    let status = send("POST", &url, "application/octet-stream", bytes.to_vec()).await?;
    if status != 201 {
        return Err(format!("uploading blob {digest}: HTTP {status}"));
    }
    Ok(digest)
}

async fn send(method: &str, url: &str, content_type: &str, body: Vec<u8>) -> Result<u16, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("Content-Type", content_type)
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    // Drain the body so the connection closes cleanly.
    let _ = response.into_body().collect().await;
    Ok(status)
}
