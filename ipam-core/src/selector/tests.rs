//! The selector language against Calico's cases: parsing, matching, and what is refused.

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
