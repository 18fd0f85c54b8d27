//! JSON Merge Patch (RFC 7396): applying a patch, and combining two patches into one where a single
//! patch can say exactly what the two say in turn (used to merge queued PATCHes to one target).

use serde_json::{Map, Value};

/// The media type of a merge patch.
pub const MEDIA_TYPE: &str = "application/merge-patch+json";

/// True when a `Content-Type` value names a merge patch (parameters such as `charset` ignored).
pub fn is_merge_patch_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// RFC 7396 §2: applies `patch` to `target`.
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                apply(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// One patch doing what `first` then `second` do, to any target; `None` where no single merge patch can
/// (an object patched over a member that `first` deleted or made a non-object: a merge patch cannot say
/// "replace with this object", only "merge into what is there").
pub fn combine(first: &Value, second: &Value) -> Option<Value> {
    let Value::Object(b) = second else {
        // The second replaces the whole document.
        return Some(second.clone());
    };
    let Value::Object(a) = first else {
        return None;
    };
    let mut out = a.clone();
    for (k, v2) in b {
        let merged = match (v2, a.get(k)) {
            // Deletions and plain values: the second's word is the last.
            (Value::Null, _) => Value::Null,
            (v, _) if !v.is_object() => v.clone(),
            // An object merged into what the target holds, untouched by the first.
            (v, None) => v.clone(),
            (v, Some(v1 @ Value::Object(_))) => combine(v1, v)?,
            // The first deleted the member or set a non-object: the second builds a fresh object there.
            (_, Some(_)) => return None,
        };
        out.insert(k.clone(), merged);
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7396 Appendix A, every row.
    #[test]
    fn apply_follows_rfc7396_appendix_a() {
        let rows = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (target, patch, want) in rows {
            let mut t = target.clone();
            apply(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    /// Every pair of patches, over every target: the combined patch does what the two do in turn, or
    /// there is no combined patch.
    #[test]
    fn a_combined_patch_does_what_the_two_do_in_turn() {
        let patches = [
            json!({"a":"x"}),
            json!({"a":null}),
            json!({"a":{"b":1}}),
            json!({"a":{"b":null,"c":2}}),
            json!({"a":{"c":{"d":3}}}),
            json!({"a":[1,2]}),
            json!({"n":1,"a":{"b":null}}),
            json!({}),
            json!([1]),
            json!("s"),
            json!(null),
        ];
        let targets = [
            json!({}),
            json!({"a":"old","n":0}),
            json!({"a":{"b":0,"c":0,"z":9}}),
            json!({"a":{"c":{"d":0,"e":1}}}),
            json!({"a":[0]}),
            json!([0]),
            json!("t"),
        ];
        let (mut combined, mut refused) = (0, 0);
        for p1 in &patches {
            for p2 in &patches {
                let Some(p) = combine(p1, p2) else {
                    refused += 1;
                    continue;
                };
                combined += 1;
                for t in &targets {
                    let mut twice = t.clone();
                    apply(&mut twice, p1);
                    apply(&mut twice, p2);
                    let mut once = t.clone();
                    apply(&mut once, &p);
                    assert_eq!(once, twice, "{t} + {p1} + {p2} vs + {p}");
                }
            }
        }
        assert!(combined > 80 && refused > 5, "{combined} combined, {refused} refused");
        assert_eq!(
            combine(&json!({"title":"a","tags":{"x":1}}), &json!({"tags":{"y":2},"n":null})),
            Some(json!({"title":"a","tags":{"x":1,"y":2},"n":null}))
        );
        assert_eq!(combine(&json!({"a":null}), &json!({"a":{"b":1}})), None);
        assert!(is_merge_patch_type("application/merge-patch+json; charset=utf-8"));
        assert!(!is_merge_patch_type("application/json-patch+json"));
    }
}
