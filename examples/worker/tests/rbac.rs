//! `rbac` for the Worker: a kind only a `Reference` node reads (the queue credentials' Secret) is
//! granted get, list and watch, never a write.
#![allow(clippy::unwrap_used)]

use cuebe_cli::rbac::{least_cluster_role, rendered_kinds};
use worker_operator::Worker;

const WITH_CREDENTIALS: &str = r#"
apiVersion: example.com/v1alpha1
kind: Worker
metadata: {name: mailer, namespace: jobs}
spec:
  image: ghcr.io/example/mailer:2.1.0
  queue: https://sqs.eu-west-1.amazonaws.com/111122223333/mail
  queueCredentials: mail-queue
"#;

#[test]
fn a_referenced_kind_is_only_read() {
    let kinds =
        rendered_kinds::<Worker>(&[("mailer.yaml".into(), WITH_CREDENTIALS.into())]).unwrap();
    let secret = (String::new(), "Secret".to_string());
    assert!(kinds.referenced.contains(&secret), "{kinds:?}");
    assert!(!kinds.written.contains(&secret), "{kinds:?}");
    assert!(
        kinds
            .written
            .contains(&("apps".into(), "Deployment".into()))
    );
    let role = least_cluster_role::<Worker>("worker-operator", &kinds);
    let verbs_on = |resource: &str| -> Vec<String> {
        role.rules
            .iter()
            .flatten()
            .filter(|r| r.resources.iter().flatten().any(|x| x == resource))
            .flat_map(|r| r.verbs.clone())
            .collect()
    };
    assert_eq!(verbs_on("secrets"), ["get", "list", "watch"]);
    assert!(verbs_on("deployments").contains(&"patch".to_string()));
}
