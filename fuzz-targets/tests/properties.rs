//! The fuzz targets as property tests: proptest feeds each target's function random bytes (both
//! readings, see the crate doc), and every seed and every kept reproducer under `fuzz/` is
//! replayed. A few hundred cases per target, seconds in all; `scripts/fuzz` runs the same
//! functions under libFuzzer for millions.
use std::path::{Path, PathBuf};

use proptest::prelude::*;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `run` on every file of `fuzz/seeds/<target>` and `fuzz/regressions/<target>`; returns
/// how many there were.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = files.filter_map(|f| Some(f.ok()?.path())).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap_or_default();
            eprintln!("replaying {}", file.display());
            run(&data);
            n += 1;
        }
    }
    n
}

/// Random bytes, a quarter of them read as text (starting with `{`).
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..max),
        1 => proptest::collection::vec(any::<u8>(), 0..max).prop_map(|mut v| {
            v.insert(0, b'{');
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn graph(data in bytes(2048)) {
        cuebe_fuzz_targets::graph::run(&data);
    }

    #[test]
    fn readiness(data in bytes(1024)) {
        cuebe_fuzz_targets::readiness::run(&data);
    }

    #[test]
    fn inventory(data in bytes(1024)) {
        cuebe_fuzz_targets::inventory::run(&data);
    }
}

proptest! {
    // Each case evaluates the platform module with CUE (tens of milliseconds).
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn spec(data in bytes(512)) {
        cuebe_fuzz_targets::spec::run(&data);
    }
}

#[test]
fn seeds_and_reproducers_replay() {
    for (target, run) in [
        ("graph", cuebe_fuzz_targets::graph::run as fn(&[u8])),
        ("readiness", cuebe_fuzz_targets::readiness::run),
        ("inventory", cuebe_fuzz_targets::inventory::run),
        ("spec", cuebe_fuzz_targets::spec::run),
    ] {
        assert!(replay(target, run) > 0, "fuzz/seeds/{target} is empty");
    }
}

/// Found by the `readiness` target, not fixed: a CEL error's message carries a Debug dump of
/// the values involved (`self` included) in hash-map order, so one object's `readyDetails`
/// differs from pass to pass, and can be as large as the object.
#[test]
#[ignore = "known: CEL error details are not stable (book/src/guides/fuzzing.md)"]
fn cel_error_details_are_stable() {
    use cuebe_core::graph::ReadinessPredicate;
    use cuebe_core::readiness::{CompiledPredicate, DefaultReadiness, Readiness};
    let text = std::fs::read_to_string(fuzz_dir().join("known/readiness/cel-error-details.json"))
        .unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let p: Vec<ReadinessPredicate> =
        serde_json::from_value(doc["readyWhen"].clone()).unwrap_or_default();
    let compiled = CompiledPredicate::compile_all(&p).unwrap_or_default();
    assert!(!compiled.is_empty(), "the reproducer has a predicate");
    let first = DefaultReadiness.evaluate(&compiled, &doc["live"]);
    for _ in 0..20 {
        assert_eq!(first, DefaultReadiness.evaluate(&compiled, &doc["live"]));
    }
}
