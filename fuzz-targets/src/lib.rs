//! What each fuzz target checks, as one function per target over raw bytes.
//!
//! The libFuzzer targets under `fuzz/` (nightly, `scripts/fuzz`) and the property tests in
//! `tests/` (stable, in `cargo test --workspace`) call the same functions, so a property holds
//! in both or in neither, and a reproducer from either replays in the other.
//!
//! Each function reads its bytes one of two ways, chosen by the first byte:
//! - **text**: the bytes are the document itself (Graph JSON, an inventory, a manifest): how
//!   the seed corpora, taken from real renders and examples, are written, and how a raw
//!   mutation tests the parsers;
//! - **structured**: the bytes drive [`arbitrary::Unstructured`] to build a document that is
//!   mostly well-formed (known field names, small id alphabets, edge-case numbers and strings)
//!   with a few fields of the wrong type, so most executions get past the parser to validation,
//!   planning, readiness or the CUE compiler.
//!
//! Every function panics when a property does not hold: that is the crash libFuzzer reports and
//! the failure proptest shrinks. Properties go beyond "does not panic": a rejection names the
//! field at fault, valid input round-trips, a plan orders every node once. Each module's doc
//! lists its properties.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod graph;
pub mod inventory;
pub mod make;
pub mod readiness;
pub mod spec;

/// True when `message` starts with a field path (`spec.replicas: …`, `nodes.a.readyWhen[0]: …`,
/// `inventory[2].mode: …`) or names a field the way serde does (``missing field `image` ``).
pub fn names_a_field(message: &str) -> bool {
    if message.contains("field `") {
        return true;
    }
    // The path's first segment is a plain name (`spec`, `nodes`, `inventory`) ending the path or
    // followed by `.` or `[`; what comes after may be anything, node ids included. A message that
    // starts with prose (`invalid type: …`) has a space after its first word instead.
    let Some((head, _)) = message.split_once(": ") else {
        return false;
    };
    let first: String = head
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    first.starts_with(|c: char| c.is_ascii_alphabetic())
        && matches!(head[first.len()..].chars().next(), None | Some('.' | '['))
}

/// True when the first byte asks for the text reading of the input (see the crate doc).
fn is_text(data: &[u8], starts: &[u8]) -> bool {
    data.first().is_some_and(|b| starts.contains(b))
}

#[cfg(test)]
mod tests {
    use super::names_a_field;

    #[test]
    fn field_paths_are_recognised() {
        for named in [
            "spec.replicas: invalid type: string \"two\", expected i32",
            "nodes.a.readyWhen[0]: timeout: invalid duration",
            "inventory[2].mode: unknown variant `Borrowed`",
            "missing field `image`",
            "nodes: dependency cycle a -> b -> a",
        ] {
            assert!(names_a_field(named), "{named}");
        }
        for unnamed in [
            "invalid type: string, expected a sequence",
            "EOF while parsing a value at line 1 column 0",
            "",
        ] {
            assert!(!names_a_field(unnamed), "{unnamed}");
        }
    }
}
