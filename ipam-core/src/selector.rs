//! Calico's label selector language, the part pools use in `nodeSelector`.
//!
//! Supported: `all()`, `global()`, `has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a', 'b'}`,
//! `k not in {...}`, `k contains 'v'`, `k starts with 'v'`, `k ends with 'v'`, `!`, `&&`,
//! `||` and parentheses. An empty selector means `all()`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The longest selector text accepted, in bytes. The parser and [`Selector::matches`]
/// recurse once per operator, so unbounded text could exhaust the stack; real node
/// selectors are a few dozen bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;

/// How deeply `!` and parentheses may nest, for the same reason.
pub const MAX_SELECTOR_NESTING: usize = 32;

/// A parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Matches everything.
    All,
    /// `global()`: Calico means it for namespaced selectors; in a plain label evaluation,
    /// such as a pool's `nodeSelector` against a node, it matches everything, as
    /// [`Selector::All`] does. Kept apart from `All` so the parse says what was written.
    Global,
    /// The label is present.
    Has(String),
    /// The label equals the value.
    Eq(String, String),
    /// The label is absent or differs.
    Ne(String, String),
    /// The label is one of the values.
    In(String, Vec<String>),
    /// The label is present and its value contains the string.
    Contains(String, String),
    /// The label is present and its value starts with the string.
    StartsWith(String, String),
    /// The label is present and its value ends with the string.
    EndsWith(String, String),
    /// Negation.
    Not(Box<Selector>),
    /// Both.
    And(Box<Selector>, Box<Selector>),
    /// Either.
    Or(Box<Selector>, Box<Selector>),
}

impl Selector {
    /// Parses selector text.
    ///
    /// ```
    /// use ipam_core::Selector;
    /// let s = Selector::parse("zone == 'a' && !has(edge)").unwrap();
    /// let labels = [("zone".to_string(), "a".to_string())].into_iter().collect();
    /// assert!(s.matches(&labels));
    /// assert!(Selector::parse("zone = 'a'").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let mut p = Parser {
            text,
            pos: 0,
            depth: 0,
        };
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(p.error(&format!(
                "the selector is {} bytes, over the limit of {MAX_SELECTOR_BYTES}",
                text.len()
            )));
        }
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector::All);
        }
        let s = p.or()?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.error("unexpected text"));
        }
        Ok(s)
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All | Selector::Global => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k) == Some(v),
            Selector::Ne(k, v) => labels.get(k) != Some(v),
            Selector::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Selector::Contains(k, s) => labels.get(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => labels.get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => labels.get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// How many `!` and `(` enclose the current position.
    depth: usize,
}

impl Parser<'_> {
    fn or(&mut self) -> Result<Selector> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector> {
        if self.eat("!") {
            let inner = self.nested(Self::unary)?;
            return Ok(Selector::Not(Box::new(inner)));
        }
        if self.eat("(") {
            let inner = self.nested(Self::or)?;
            return if self.eat(")") {
                Ok(inner)
            } else {
                Err(self.error("expected ')'"))
            };
        }
        self.term()
    }

    /// Parses one nesting level deeper, refusing past [`MAX_SELECTOR_NESTING`].
    fn nested(&mut self, parse: fn(&mut Self) -> Result<Selector>) -> Result<Selector> {
        if self.depth >= MAX_SELECTOR_NESTING {
            return Err(self.error(&format!("nested deeper than {MAX_SELECTOR_NESTING} levels")));
        }
        self.depth += 1;
        let inner = parse(self);
        self.depth -= 1;
        inner
    }

    fn term(&mut self) -> Result<Selector> {
        if self.eat_empty_call("all(")? {
            return Ok(Selector::All);
        }
        if self.eat_empty_call("global(")? {
            return Ok(Selector::Global);
        }
        if self.eat("has(") {
            let key = self.ident()?;
            return if self.eat(")") {
                Ok(Selector::Has(key))
            } else {
                Err(self.error("expected ')' after has(key"))
            };
        }
        let key = self.ident()?;
        self.label_test(key)
    }

    /// The operator after a label, and the value or set it tests the label against.
    fn label_test(&mut self, key: String) -> Result<Selector> {
        if self.eat("==") {
            Ok(Selector::Eq(key, self.operand("==")?))
        } else if self.eat("!=") {
            Ok(Selector::Ne(key, self.operand("!=")?))
        } else if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected 'in' after 'not'"));
            }
            Ok(Selector::Not(Box::new(Selector::In(key, self.set()?))))
        } else if self.eat_word("in") {
            Ok(Selector::In(key, self.set()?))
        } else if self.eat_word("contains") {
            Ok(Selector::Contains(key, self.operand("contains")?))
        } else if self.eat_phrase("starts", "with")? {
            Ok(Selector::StartsWith(key, self.operand("starts with")?))
        } else if self.eat_phrase("ends", "with")? {
            Ok(Selector::EndsWith(key, self.operand("ends with")?))
        } else {
            Err(self.error("expected ==, !=, in, not in, contains, starts with or ends with"))
        }
    }

    /// `all()` or `global()`, `call` being the name and its `(`. Calico allows blanks
    /// before the `)`, and once the `(` is read nothing else can follow, so an unclosed
    /// call is an error here rather than a label named `all` or `global`.
    fn eat_empty_call(&mut self, call: &str) -> Result<bool> {
        if !self.eat(call) {
            return Ok(false);
        }
        if self.eat(")") {
            Ok(true)
        } else {
            Err(self.error(&format!("expected ')' after '{call}'")))
        }
    }

    /// A two-word operator such as `starts with`. Calico's tokenizer skips any blanks
    /// between the words, none included, so `startswith` is accepted as it is there.
    /// Nothing else may follow a label with `first`, so a missing `second` is an error.
    fn eat_phrase(&mut self, first: &str, second: &str) -> Result<bool> {
        if !self.eat(first) {
            return Ok(false);
        }
        if self.eat_word(second) {
            Ok(true)
        } else {
            Err(self.error(&format!("expected '{second}' after '{first}'")))
        }
    }

    /// The quoted string an operator compares with; the error names the operator, which
    /// says more than "a quoted value" alone when the string is missing.
    fn operand(&mut self, op: &str) -> Result<String> {
        self.skip_ws();
        if !self.text[self.pos..].starts_with(['\'', '"']) {
            return Err(self.error(&format!("expected a quoted string after '{op}'")));
        }
        self.string()
    }

    fn set(&mut self) -> Result<Vec<String>> {
        if !self.eat("{") {
            return Err(self.error("expected '{'"));
        }
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("expected ',' or '}'"));
            }
        }
    }

    fn ident(&mut self) -> Result<String> {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.error("expected a label name"));
        }
        self.pos += len;
        Ok(rest[..len].to_owned())
    }

    fn string(&mut self) -> Result<String> {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let quote = rest
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or_else(|| self.error("expected a quoted value"))?;
        let end = rest[1..]
            .find(quote)
            .ok_or_else(|| self.error("unterminated string"))?;
        self.pos += end + 2;
        Ok(rest[1..=end].to_owned())
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.text[self.pos..].starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        // `strip_prefix`, not slicing by `word.len()`: the text may hold a multi-byte
        // character where the word would end.
        let boundary = self.text[self.pos..].strip_prefix(word).map(|after| {
            after
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric())
        });
        if boundary == Some(true) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn error(&self, what: &str) -> Error {
        Error::InvalidSelector {
            selector: self.text.to_owned(),
            reason: format!("{what} at byte {}", self.pos),
        }
    }
}

#[cfg(test)]
mod tests;
