//! The dotted key (`app[1].initial_live`) of a place in a config file, for
//! the errors serde reports while reading it into
//! [`FileConfig`](super::file::FileConfig): a bad enum variant, a value of
//! the wrong type, a missing key. toml gives those a span but no key; the
//! validator's own problems name theirs ([`super::validate`]).
//!
//! The document is parsed again without a schema (it parsed once already,
//! so this cannot fail where serde's error came from) and the key whose
//! value is the smallest span around the error is named: a value
//! (`initial_live = "purple"`: `app[0].initial_live`), an array element
//! (`upstreams[2]`), or a table header (`missing field`: `app[0].blue`).
//! An error at a key itself (`unknown field`) names the key in its message
//! already, and gets no key here, unless the key is inside an inline table
//! (`initial_live = { a = 1 }`): then the error is about the value, and
//! names its key.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The key of the value at `span` in `text`, as the validator writes keys
/// (`app[0].health.rise`); empty when there is none (a syntax error, an
/// error at a key, the top of the file).
pub fn at(text: &str, span: &Range<usize>) -> String {
    let Ok(doc) = DeTable::parse(text) else {
        return String::new();
    };
    let mut best = Best {
        pos: span.start,
        found: None,
    };
    table(doc.get_ref(), "", false, &mut best);
    best.found.and_then(|(_, key)| key).unwrap_or_default()
}

/// The smallest node around `pos` so far: its span, and its key (`None`
/// for a key itself).
struct Best {
    pos: usize,
    found: Option<(Range<usize>, Option<String>)>,
}

impl Best {
    fn consider(&mut self, span: Range<usize>, key: Option<&str>) {
        let around = span.contains(&self.pos) || (span.is_empty() && span.start == self.pos);
        if !around {
            return;
        }
        let better = match &self.found {
            None => true,
            Some((s, k)) => {
                span.len() < s.len()
                    || (span.len() == s.len()
                        && key.map_or(0, str::len) > k.as_deref().map_or(0, str::len))
            }
        };
        if better {
            self.found = Some((span, key.map(String::from)));
        }
    }
}

/// `inline`: `t` is an inline table (`{ a = 1 }`), the value of `prefix`:
/// an error at one of its keys is an error in that value (e.g. a table
/// where an enum's string should be), and names `prefix`.
fn table(t: &DeTable<'_>, prefix: &str, inline: bool, best: &mut Best) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        best.consider(k.span(), inline.then_some(prefix));
        value(v, &key, best);
    }
}

fn value(v: &Spanned<DeValue<'_>>, key: &str, best: &mut Best) {
    best.consider(v.span(), Some(key));
    match v.get_ref() {
        DeValue::Table(t) => {
            // A header table's span is its header; an inline one's holds
            // its keys.
            let span = v.span();
            let inline = !t.is_empty() && t.keys().all(|k| span.contains(&k.span().start));
            table(t, key, inline, best)
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                value(item, &format!("{key}[{i}]"), best);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(text: &str, needle: &str) -> String {
        let start = text.find(needle).unwrap();
        at(text, &(start..start + needle.len()))
    }

    #[test]
    fn names_values_elements_and_tables() {
        let text = "[proxy]\nlisten = [\"a\", \"b\"]\n\n[[app]]\nname = \"x\"\n[app.blue]\nupstreams = [\"u\"]\n\n\
                    [[app]]\nname = \"y\"\ninitial_live = \"purple\"\n[app.health]\nrise = true\n\
                    [app.env]\nA = 1\n";
        assert_eq!(key_of(text, "\"purple\""), "app[1].initial_live");
        assert_eq!(key_of(text, "\"b\""), "proxy.listen[1]");
        assert_eq!(key_of(text, "true"), "app[1].health.rise");
        assert_eq!(key_of(text, "1\n"), "app[1].env.A");
        // A missing key is reported at its table's header.
        let second = text.rfind("[[app]]").unwrap();
        assert_eq!(at(text, &(second..second + 7)), "app[1]");
        // Errors at a key, and syntax errors, get none.
        assert_eq!(key_of(text, "initial_live"), "");
        assert_eq!(at("[proxy\nx = 1", &(0..1)), "");
        // A key inside an inline table: the value's key.
        let text = "[[app]]\ninitial_live = { a = 1 }\n";
        assert_eq!(key_of(text, "a = 1"), "app[0].initial_live");
    }
}
