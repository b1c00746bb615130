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
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn evaluates_the_supported_forms() {
        let l = labels(&[("zone", "a"), ("kubernetes.io/os", "linux")]);
        let cases = [
            ("", true),
            ("all()", true),
            ("!all()", false),
            ("has(zone)", true),
            ("has(rack)", false),
            ("zone == 'a'", true),
            ("zone != \"a\"", false),
            ("rack != 'x'", true),
            ("zone in {'b', 'a'}", true),
            ("zone not in {'a'}", false),
            (
                "kubernetes.io/os == 'linux' && (zone == 'b' || has(zone))",
                true,
            ),
            ("!(zone == 'a') || has(rack)", false),
        ];
        for (text, want) in cases {
            assert_eq!(Selector::parse(text).unwrap().matches(&l), want, "{text}");
        }
    }

    #[test]
    fn bad_selectors_are_refused_with_a_position() {
        for text in [
            "zone = 'a'",
            "has(zone",
            "zone == a",
            "(zone == 'a'",
            "zone == 'a' junk",
            "zone in {'a'",
        ] {
            let err = Selector::parse(text).unwrap_err().to_string();
            assert!(err.contains("at byte"), "{text}: {err}");
        }
    }

    #[test]
    fn multibyte_text_is_refused_not_a_panic() {
        for text in [
            "zone ééé",
            "zone é€",
            "k é€",
            "é",
            "zone == 'é",
            "has(é)",
            "k in {'é',",
        ] {
            assert!(Selector::parse(text).is_err(), "{text}");
        }
        assert!(Selector::parse("zone == 'é€'").is_ok());
    }

    /// Parses `text`, which must be valid, and evaluates it against `l`.
    fn eval(text: &str, l: &BTreeMap<String, String>) -> bool {
        Selector::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .matches(l)
    }

    #[test]
    fn contains_starts_with_and_ends_with_test_the_value() {
        let l = labels(&[("topology.kubernetes.io/zone", "eu-west-1")]);
        let cases = [
            ("topology.kubernetes.io/zone contains 'west'", true),
            ("topology.kubernetes.io/zone contains \"east\"", false),
            ("topology.kubernetes.io/zone starts with 'eu-'", true),
            ("topology.kubernetes.io/zone starts with \"west\"", false),
            ("topology.kubernetes.io/zone ends with '-1'", true),
            ("topology.kubernetes.io/zone ends with \"eu\"", false),
            // The whole value counts as containing, starting and ending with itself.
            ("topology.kubernetes.io/zone contains 'eu-west-1'", true),
            ("topology.kubernetes.io/zone starts with 'eu-west-1'", true),
            ("topology.kubernetes.io/zone ends with 'eu-west-1'", true),
            // Longer than the value: no match, and no out-of-range slice either.
            (
                "topology.kubernetes.io/zone starts with 'eu-west-10'",
                false,
            ),
            // Case matters, as in Calico.
            ("topology.kubernetes.io/zone contains 'WEST'", false),
            // No blank needed before the string.
            ("topology.kubernetes.io/zone contains'west'", true),
        ];
        for (text, want) in cases {
            assert_eq!(eval(text, &l), want, "{text}");
        }
    }

    #[test]
    fn string_operators_do_not_match_an_absent_label() {
        let l = labels(&[("zone", "eu-west-1")]);
        for text in [
            "rack contains ''",
            "rack starts with ''",
            "rack ends with ''",
            "rack contains 'eu'",
        ] {
            assert!(!eval(text, &l), "{text}");
            // So the negation matches it, as Calico's `!` over the same node does.
            assert!(eval(&format!("!({text})"), &l), "!({text})");
        }
        // An empty string is in every value, so only presence is tested.
        assert!(eval("zone contains ''", &l));
        assert!(eval("zone starts with ''", &labels(&[("zone", "")])));
    }

    #[test]
    fn string_operators_combine_with_and_or_not() {
        let l = labels(&[("zone", "eu-west-1"), ("rack", "r12")]);
        let cases = [
            ("zone starts with 'eu' && rack ends with '12'", true),
            ("zone starts with 'eu' && rack ends with '13'", false),
            ("zone starts with 'us' || rack contains '1'", true),
            ("zone starts with 'us' || rack contains '3'", false),
            ("!zone contains 'west'", false),
            ("!zone contains 'east'", true),
            ("!(zone ends with '1' && has(rack))", false),
            (
                "(zone ends with '2' || zone ends with '1') && rack in {'r12'}",
                true,
            ),
            ("has(rack) && !(zone contains 'eu' || rack == 'x')", false),
        ];
        for (text, want) in cases {
            assert_eq!(eval(text, &l), want, "{text}");
        }
    }

    #[test]
    fn starts_with_and_ends_with_allow_any_blanks_between_the_words() {
        let l = labels(&[("zone", "eu-west-1")]);
        for text in [
            "zone starts with 'eu'",
            "zone starts   with 'eu'",
            "zone starts\twith 'eu'",
            "zone startswith 'eu'",
            "zone ends \t with '1'",
            "zone endswith '1'",
        ] {
            assert!(eval(text, &l), "{text}");
        }
        assert!(!eval("zone startswith 'us'", &l));
    }

    #[test]
    fn operator_words_can_still_be_label_names() {
        // Calico only reads these words as operators right after a label.
        let l = labels(&[("contains", "x"), ("starts", "with"), ("global", "g")]);
        assert!(eval("contains contains 'x'", &l));
        assert!(eval("starts starts with 'wi'", &l));
        assert!(eval("global == 'g'", &l));
        assert!(!eval("global != 'g'", &l));
    }

    #[test]
    fn global_matches_everything() {
        assert_eq!(Selector::parse("global()").unwrap(), Selector::Global);
        assert_eq!(Selector::parse(" global( ) ").unwrap(), Selector::Global);
        let l = labels(&[("zone", "a")]);
        for l in [&l, &BTreeMap::new()] {
            assert!(eval("global()", l));
            assert!(!eval("!global()", l));
            assert!(eval("global() || zone == 'b'", l));
        }
        assert!(eval("global() && has(zone)", &l));
        assert!(!eval("global() && has(zone)", &BTreeMap::new()));
    }

    #[test]
    fn string_operators_compare_multibyte_text() {
        let l = labels(&[("city", "Zürich-€")]);
        let cases = [
            ("city starts with 'Zü'", true),
            ("city ends with \"€\"", true),
            ("city contains 'rich-'", true),
            ("city ends with 'h-€'", true),
            // No normalisation: 'u' is not 'ü'.
            ("city starts with 'Zu'", false),
            ("city contains 'ü€'", false),
            // A needle longer than the value, ending inside a multi-byte character.
            ("city ends with '€€'", false),
        ];
        for (text, want) in cases {
            assert_eq!(eval(text, &l), want, "{text}");
        }
    }

    #[test]
    fn malformed_string_operators_and_global_are_refused_with_a_reason() {
        let cases = [
            ("zone starts 'eu'", "expected 'with' after 'starts'"),
            ("zone ends 'eu'", "expected 'with' after 'ends'"),
            ("zone starts wé 'eu'", "expected 'with' after 'starts'"),
            ("zone contains", "expected a quoted string after 'contains'"),
            (
                "zone contains eu",
                "expected a quoted string after 'contains'",
            ),
            (
                "zone contains é",
                "expected a quoted string after 'contains'",
            ),
            (
                "zone starts with",
                "expected a quoted string after 'starts with'",
            ),
            (
                "zone ends with {'a'}",
                "expected a quoted string after 'ends with'",
            ),
            ("zone contains 'é", "unterminated string"),
            (
                "zone containsé 'x'",
                "expected a quoted string after 'contains'",
            ),
            (
                "zone like 'x'",
                "expected ==, !=, in, not in, contains, starts with or",
            ),
            ("global(", "expected ')' after 'global('"),
            ("global(zone)", "expected ')' after 'global('"),
            ("global() && global(", "expected ')' after 'global('"),
            ("all(", "expected ')' after 'all('"),
        ];
        for (text, want) in cases {
            let err = Selector::parse(text).expect_err(text).to_string();
            assert!(
                err.contains(want) && err.contains("at byte"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn deep_or_long_text_is_refused_not_a_stack_overflow() {
        // Found by the `selector` fuzz target: each `!` or `(` was one more stack frame.
        let deep_not = "!".repeat(MAX_SELECTOR_NESTING + 1) + "all()";
        let deep_parens =
            "(".repeat(MAX_SELECTOR_NESTING + 1) + "all()" + &")".repeat(MAX_SELECTOR_NESTING + 1);
        let long = "a == 'b' || ".repeat(MAX_SELECTOR_BYTES / 12 + 1) + "all()";
        for text in [deep_not, deep_parens, long] {
            let err = Selector::parse(&text).expect_err("refused").to_string();
            assert!(
                err.contains("nested deeper") || err.contains("over the limit"),
                "{err}"
            );
        }
        let at_limit = "!".repeat(MAX_SELECTOR_NESTING) + "all()";
        let parsed = Selector::parse(&at_limit).expect("at the limit");
        assert_eq!(
            parsed.matches(&BTreeMap::new()),
            MAX_SELECTOR_NESTING % 2 == 0
        );
    }
}
