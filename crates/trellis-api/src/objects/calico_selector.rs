//! [`CalicoSelector`]: the selector expressions of Calico's `projectcalico.org/v3`
//! resources (`nodeSelector`, `peerSelector` of a BGPPeer), so their manifests are taken
//! as they are.
//!
//! Grammar: `all()`; `has(k)`; `k == 'v'`; `k != 'v'`; `k in {'a', 'b'}`;
//! `k not in {'a'}`; `!e`; `e && e`; `e || e`; parentheses. Values are quoted with `'`
//! or `"`. `&&` binds tighter than `||`. The empty string selects nothing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed selector, kept with its source text (serialized as written).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CalicoSelector {
    text: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Expr {
    All,
    Nothing,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl CalicoSelector {
    /// Parse `text`; the error says where it went wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expr = if text.trim().is_empty() {
            Expr::Nothing
        } else {
            let mut p = Parser {
                s: text.as_bytes(),
                i: 0,
            };
            let e = p.or()?;
            p.ws();
            if p.i != p.s.len() {
                return Err(p.error("unexpected text"));
            }
            e
        };
        Ok(Self {
            text: text.to_string(),
            expr,
        })
    }

    /// Whether `labels` satisfy it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.expr.eval(labels)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Expr {
    fn eval(&self, l: &BTreeMap<String, String>) -> bool {
        match self {
            Expr::All => true,
            Expr::Nothing => false,
            Expr::Has(k) => l.contains_key(k),
            Expr::Eq(k, v) => l.get(k) == Some(v),
            Expr::Ne(k, v) => l.get(k) != Some(v),
            Expr::In(k, vs) => l.get(k).is_some_and(|v| vs.contains(v)),
            Expr::NotIn(k, vs) => l.get(k).is_none_or(|v| !vs.contains(v)),
            Expr::Not(e) => !e.eval(l),
            Expr::And(a, b) => a.eval(l) && b.eval(l),
            Expr::Or(a, b) => a.eval(l) || b.eval(l),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at character {}", self.i + 1)
    }

    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(tok.as_bytes()) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err(self.error("expected ')'"));
            }
            return Ok(e);
        }
        if self.eat("all()") {
            return Ok(Expr::All);
        }
        if self.eat("has(") {
            let k = self.key()?;
            if !self.eat(")") {
                return Err(self.error("expected ')' after has(key"));
            }
            return Ok(Expr::Has(k));
        }
        let k = self.key()?;
        if self.eat("==") {
            return Ok(Expr::Eq(k, self.value()?));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(k, self.value()?));
        }
        if self.eat("not in") {
            return Ok(Expr::NotIn(k, self.set()?));
        }
        if self.eat("in") {
            return Ok(Expr::In(k, self.set()?));
        }
        Err(self.error(&format!("expected ==, !=, in or not in after label {k:?}")))
    }

    fn key(&mut self) -> Result<String, String> {
        self.ws();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"-_./".contains(c))
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.error("expected a label key"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn value(&mut self) -> Result<String, String> {
        self.ws();
        let q = match self.s.get(self.i) {
            Some(q @ (b'\'' | b'"')) => *q,
            _ => return Err(self.error("expected a quoted value")),
        };
        self.i += 1;
        let start = self.i;
        while self.s.get(self.i).is_some_and(|c| *c != q) {
            self.i += 1;
        }
        if self.i == self.s.len() {
            return Err(self.error("unterminated quoted value"));
        }
        let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, String> {
        if !self.eat("{") {
            return Err(self.error("expected '{'"));
        }
        let mut out = Vec::new();
        if self.eat("}") {
            return Ok(out);
        }
        loop {
            out.push(self.value()?);
            if self.eat("}") {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(self.error("expected ',' or '}'"));
            }
        }
    }
}

impl fmt::Display for CalicoSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for CalicoSelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CalicoSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CalicoSelector::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("selector {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn calico_selectors_parse_and_match() {
        let rr = labels(&[("route-reflector", "true"), ("rack", "a")]);
        let plain = labels(&[("rack", "b")]);
        let cases = [
            ("all()", true, true),
            ("has(route-reflector)", true, false),
            ("!has(route-reflector)", false, true),
            ("route-reflector == 'true'", true, false),
            ("rack != \"a\"", false, true),
            ("rack in {'a', 'c'}", true, false),
            ("rack not in {'a'}", false, true),
            ("has(rack) && !(rack == 'a' || rack == 'c')", false, true),
            ("", false, false),
        ];
        for (text, on_rr, on_plain) in cases {
            let s = CalicoSelector::parse(text).unwrap();
            assert_eq!(
                (s.matches(&rr), s.matches(&plain)),
                (on_rr, on_plain),
                "{text}"
            );
        }
        for bad in [
            "has(x",
            "rack = 'a'",
            "rack == a",
            "rack in {'a' 'b'}",
            "all() &&",
        ] {
            assert!(CalicoSelector::parse(bad).is_err(), "{bad}");
        }
    }
}
