//! Building JSON documents from fuzzer bytes: mostly the right shape, sometimes not.
//!
//! Pure `arbitrary` would spend nearly every input on strings no parser gets past; these pick
//! from small pools of meaningful values (node ids that collide, condition types the readiness
//! code looks for, numbers at the edges of `i64`) and only sometimes from the raw bytes.
//! An exhausted input yields defaults (`Unstructured` does not fail on that), so every byte
//! string is a valid input.
use arbitrary::Unstructured;
use serde_json::{Map, Value, json};

/// One of `items` (the first when the input is exhausted).
pub fn pick<T: Clone>(u: &mut Unstructured<'_>, items: &[T]) -> T {
    match u.choose(items) {
        Ok(v) => v.clone(),
        // `items` is never empty here: the pools are constants.
        Err(_) => items[0].clone(),
    }
}

/// True with roughly `percent`% chance.
pub fn chance(u: &mut Unstructured<'_>, percent: u8) -> bool {
    u.int_in_range(0..=99u8).unwrap_or(99) < percent
}

/// A count in `0..=max`.
pub fn count(u: &mut Unstructured<'_>, max: usize) -> usize {
    u.int_in_range(0..=max).unwrap_or(0)
}

/// A string from `pool`, or (sometimes) straight from the input bytes.
pub fn string(u: &mut Unstructured<'_>, pool: &[&str]) -> String {
    if chance(u, 10) {
        u.arbitrary::<String>().unwrap_or_default()
    } else {
        pick(u, pool).to_string()
    }
}

/// Integers where comparisons and arithmetic go wrong.
pub const EDGE_INTS: &[i64] = &[0, 1, 2, 3, -1, 5, 100, i64::MAX, i64::MIN, i32::MAX as i64];

/// An integer, mostly from [`EDGE_INTS`].
pub fn int(u: &mut Unstructured<'_>) -> i64 {
    if chance(u, 20) {
        u.arbitrary().unwrap_or(0)
    } else {
        pick(u, EDGE_INTS)
    }
}

/// Any JSON value, at most `depth` levels deep, with object keys from `keys`. Numbers are
/// integers (and `u64::MAX`, which is not an `i64`), plus a float now and then.
pub fn any_value(u: &mut Unstructured<'_>, depth: usize, keys: &[&str]) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match u.int_in_range(0..=kinds - 1).unwrap_or(0) {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary().unwrap_or(false)),
        2 => json!(int(u)),
        3 => {
            if chance(u, 50) {
                json!(u64::MAX)
            } else {
                json!(1.5)
            }
        }
        4 => Value::String(string(u, keys)),
        5 => Value::Array(
            (0..count(u, 3))
                .map(|_| any_value(u, depth - 1, keys))
                .collect(),
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..count(u, 4) {
                let key = string(u, keys);
                let value = any_value(u, depth - 1, keys);
                map.insert(key, value);
            }
            Value::Object(map)
        }
    }
}

/// Replaces one value somewhere inside `doc` (object members and array items, any depth) with
/// an arbitrary one: the "one field of the wrong type" every parser must name.
pub fn corrupt(u: &mut Unstructured<'_>, doc: &mut Value, keys: &[&str]) {
    let mut cur = doc;
    loop {
        let children = match &*cur {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        // Stop here (and replace this value) at a leaf, or now and then on the way down.
        if children == 0 || chance(u, 30) {
            break;
        }
        let i = count(u, children - 1);
        cur = match cur {
            Value::Object(m) => match m.values_mut().nth(i) {
                Some(v) => v,
                None => return,
            },
            Value::Array(a) => &mut a[i],
            _ => return,
        };
    }
    *cur = any_value(u, 2, keys);
}
