//! Kubernetes label selectors over an object's labels (`k=v`, `k==v`, `k!=v`, `k`, `!k`,
//! `k in (a,b)`, `k notin (a,b)`), and the `metadata.name` field selector.

use serde_json::{Map, Value};

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v` / `k==v`.
    Equals(String, String),
    /// `k!=v` (also true when `k` is absent).
    NotEquals(String, String),
    /// `k`.
    Exists(String),
    /// `!k`.
    NotExists(String),
    /// `k in (a,b)`.
    In(String, Vec<String>),
    /// `k notin (a,b)` (also true when `k` is absent).
    NotIn(String, Vec<String>),
}

/// A parsed selector: all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// Parses `labelSelector`; an empty string selects everything.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_one(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v),
            Requirement::NotEquals(k, v) => get(k) != Some(v),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        })
    }

    /// The value `key` must equal, if the selector pins it.
    pub fn pinned(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|r| match r {
            Requirement::Equals(k, v) if k == key => Some(v.as_str()),
            _ => None,
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_one(part: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        let ok = !k.is_empty()
            && k.len() <= 317
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        ok.then(|| k.to_owned())
            .ok_or_else(|| format!("invalid label key {k:?}"))
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        let ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        ok.then(|| v.to_owned())
            .ok_or_else(|| format!("invalid label value {v:?}"))
    };
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(k)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = part.split_once(op) {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("expected a parenthesized list in {part:?}"))?;
            let vs = inner.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
            let k = key(k)?;
            return Ok(if notin {
                Requirement::NotIn(k, vs)
            } else {
                Requirement::In(k, vs)
            });
        }
    }
    Ok(Requirement::Exists(key(part)?))
}

/// A `fieldSelector` over `metadata.name` (the only field this server indexes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameSelector {
    /// Names that must match.
    pub equals: Option<String>,
    /// Names that must not match.
    pub not_equals: Vec<String>,
}

impl NameSelector {
    /// Parses `fieldSelector`; fields other than `metadata.name` are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut sel = NameSelector::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(v) = part.strip_prefix("metadata.name!=") {
                sel.not_equals.push(v.to_owned());
            } else if let Some(v) = part
                .strip_prefix("metadata.name==")
                .or_else(|| part.strip_prefix("metadata.name="))
            {
                sel.equals = Some(v.to_owned());
            } else {
                return Err(format!(
                    "field label not supported: {:?}",
                    part.split(['=', '!']).next().unwrap_or(part)
                ));
            }
        }
        Ok(sel)
    }

    /// Whether `name` passes.
    pub fn matches(&self, name: &str) -> bool {
        self.equals.as_deref().is_none_or(|e| e == name)
            && !self.not_equals.iter().any(|n| n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn every_operator() {
        let l = labels(json!({"a": "1", "b": "2"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m("a=1") && m("a==1") && m("a!=2") && m("c!=1"));
        assert!(m("a") && m("!c") && !m("!a") && !m("c"));
        assert!(m("a in (1,3),b notin (3)") && !m("a notin (1)"));
        assert!(m("a=1,b=2") && !m("a=1,b=3"));
        assert!(m(""));
        assert_eq!(LabelSelector::parse("a=1").unwrap().pinned("a"), Some("1"));
        assert!(LabelSelector::parse("a=(").is_err());
    }

    #[test]
    fn name_field_selector() {
        let s = NameSelector::parse("metadata.name=x").unwrap();
        assert!(s.matches("x") && !s.matches("y"));
        assert!(
            !NameSelector::parse("metadata.name!=x")
                .unwrap()
                .matches("x")
        );
        assert!(NameSelector::parse("spec.cidr=1").is_err());
    }
}
