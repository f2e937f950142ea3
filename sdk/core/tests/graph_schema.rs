//! The Graph's JSON Schema published in the book matches the Rust types.
//! Regenerate with `CUEBE_UPDATE_SCHEMA=1 cargo test -p cuebe-core --test graph_schema`.

#[test]
fn published_graph_schema_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../book/src/reference/graph.schema.json"
    );
    let current = serde_json::to_string_pretty(&cuebe_core::graph::json_schema())
        .expect("schema serializes")
        + "\n";
    if std::env::var_os("CUEBE_UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &current).expect("write schema");
    }
    let published = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        published == current,
        "book/src/reference/graph.schema.json is stale: run CUEBE_UPDATE_SCHEMA=1 cargo test -p cuebe-core --test graph_schema"
    );
}
