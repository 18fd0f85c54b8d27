//! JSON paths like `items[*].url`: parsed once when the config is read, stored typed in the route
//! policy, and evaluated against answers without re-parsing.

use serde::Serialize;
use serde_json::Value;

/// A path into JSON like `items[*].url` or `data.tracks[0].src`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    source: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Each,
    Index(usize),
}

impl JsonPath {
    /// Parses `a.b[*].c`; errors name the problem.
    pub fn parse(src: &str) -> Result<JsonPath, String> {
        let mut steps = Vec::new();
        for part in src.split('.') {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if name.is_empty() && steps.is_empty() && rest.is_empty() {
                return Err(format!("JSON path {src:?} has an empty segment"));
            }
            if !name.is_empty() {
                steps.push(Step::Key(name.to_string()));
            }
            while !rest.is_empty() {
                if !rest.starts_with('[') {
                    return Err(format!("JSON path {src:?}: unexpected {rest:?} after ']'"));
                }
                let close = rest
                    .find(']')
                    .ok_or_else(|| format!("JSON path {src:?}: '[' without ']'"))?;
                let inner = &rest[1..close];
                steps.push(match inner {
                    "*" => Step::Each,
                    n => Step::Index(
                        n.parse()
                            .map_err(|_| format!("JSON path {src:?}: [{n}] is not * or a number"))?,
                    ),
                });
                rest = &rest[close + 1..];
            }
        }
        if steps.is_empty() {
            return Err(format!("JSON path {src:?} is empty"));
        }
        Ok(JsonPath {
            source: src.to_string(),
            steps,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Every string found at the path.
    pub fn strings<'a>(&self, v: &'a Value) -> Vec<&'a str> {
        self.values(v).into_iter().filter_map(Value::as_str).collect()
    }

    /// Every value found at the path.
    pub fn values<'a>(&self, v: &'a Value) -> Vec<&'a Value> {
        let mut cur = vec![v];
        for step in &self.steps {
            let mut next = Vec::new();
            for c in cur {
                match (step, c) {
                    (Step::Key(k), Value::Object(o)) => next.extend(o.get(k)),
                    (Step::Each, Value::Array(a)) => next.extend(a.iter()),
                    (Step::Index(i), Value::Array(a)) => next.extend(a.get(*i)),
                    _ => {}
                }
            }
            cur = next;
        }
        cur
    }
}

impl JsonPath {
    /// True when the path names one place (no `[*]`).
    pub fn is_single(&self) -> bool {
        !self.steps.contains(&Step::Each)
    }

    /// The one value at a single-place path, to change in place (`None` for `[*]` paths or nothing there).
    pub fn get_mut<'a>(&self, v: &'a mut Value) -> Option<&'a mut Value> {
        let mut cur = v;
        for step in &self.steps {
            cur = match (step, cur) {
                (Step::Key(k), Value::Object(o)) => o.get_mut(k)?,
                (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

impl Serialize for JsonPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths_find_pinned_urls() {
        let v =
            json!({"items": [{"url": "u1"}, {"url": "u2"}, {"title": "no url"}], "data": {"tracks": [{"src": "s0"}]}});
        assert_eq!(JsonPath::parse("items[*].url").unwrap().strings(&v), vec!["u1", "u2"]);
        assert_eq!(JsonPath::parse("data.tracks[0].src").unwrap().strings(&v), vec!["s0"]);
        assert!(JsonPath::parse("items[*].missing").unwrap().strings(&v).is_empty());
        let mut w = v.clone();
        let tracks = JsonPath::parse("data.tracks").unwrap();
        assert!(tracks.is_single() && !JsonPath::parse("items[*]").unwrap().is_single());
        tracks.get_mut(&mut w).unwrap().as_array_mut().unwrap().clear();
        assert_eq!(w["data"]["tracks"], json!([]));
        assert!(JsonPath::parse("data.none").unwrap().get_mut(&mut w).is_none());
        // "a[0]é[*]" panicked (slicing inside a multi-byte char) before the parsers test found it.
        for bad in ["", "items[", "items[x]", "a[0]\u{e9}[*]", "a[0]x"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
