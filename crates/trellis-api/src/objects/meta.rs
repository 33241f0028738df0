//! [`ObjectMeta`] and the naming rules every kind shares: DNS-1123 names, label keys and
//! values, RFC 3339 timestamps.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Kind, ValidationError};

/// Longest DNS-1123 label (and longest object name for most kinds).
pub const DNS1123_LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain (and longest Node name).
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// Longest label value, and longest name part of a label key.
pub const LABEL_VALUE_MAX: usize = 63;

/// `metadata` of every object.
///
/// `resourceVersion` and `creationTimestamp` are set by the server (the store's mod
/// revision and the creation time); a client may send `resourceVersion` back for an
/// optimistic-concurrency update. `namespace` is set for namespaced kinds only
/// ([`Kind::namespaced`]); [`Object::default_namespace`](super::Object::default_namespace)
/// fills it where a manifest leaves it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name, unique per kind (and namespace). Required; see
    /// [`Kind::name_rule`] for the allowed form.
    #[serde(default)]
    pub name: String,
    /// The namespace of a namespaced object; absent for cluster-scoped kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels, matched by selectors (Service `spec.selector`, later policies).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form notes (not matched by anything); accepted so Kubernetes manifests
    /// apply unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Server-set: the store's mod revision of this version of the object, in decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Server-set: when the object was created, RFC 3339 UTC (`2024-05-01T12:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// Metadata of a cluster-scoped object.
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Metadata of a namespaced object.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }
    }

    /// `resourceVersion` as a store revision; `None` when absent or not a decimal number.
    pub fn revision(&self) -> Option<u64> {
        self.resource_version.as_deref()?.parse().ok()
    }

    /// Set `resourceVersion` to a store revision.
    pub fn set_revision(&mut self, revision: u64) {
        self.resource_version = Some(revision.to_string());
    }

    /// Set `creationTimestamp` to `time`, formatted by [`format_rfc3339`].
    pub fn set_creation_time(&mut self, time: SystemTime) {
        self.creation_timestamp = Some(format_rfc3339(time));
    }

    /// Check the metadata of an object of `kind`; error fields start with `metadata.`.
    pub fn validate(&self, kind: Kind) -> Result<(), ValidationError> {
        self.validate_inner(kind).map_err(|e| e.under("metadata"))
    }

    fn validate_inner(&self, kind: Kind) -> Result<(), ValidationError> {
        if self.name.is_empty() {
            return Err(ValidationError::new("name", "is required"));
        }
        let name_check = match kind.name_rule() {
            NameRule::Label => validate_dns1123_label(&self.name),
            NameRule::Subdomain => validate_dns1123_subdomain(&self.name),
        };
        name_check.map_err(|m| ValidationError::new("name", m))?;
        match (&self.namespace, kind.namespaced()) {
            (None, true) => {
                return Err(ValidationError::new(
                    "namespace",
                    format!("is required: {kind} is a namespaced kind"),
                ))
            }
            (Some(ns), true) => {
                validate_dns1123_label(ns).map_err(|m| ValidationError::new("namespace", m))?
            }
            (Some(_), false) => {
                return Err(ValidationError::new(
                    "namespace",
                    format!("must not be set: {kind} is a cluster-scoped kind"),
                ))
            }
            (None, false) => {}
        }
        validate_labels(&self.labels).map_err(|e| e.under("labels"))?;
        if let Some(rv) = &self.resource_version {
            if rv.is_empty() || !rv.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ValidationError::new(
                    "resourceVersion",
                    format!("{rv:?} is not a resource version (a decimal store revision)"),
                ));
            }
        }
        if let Some(ts) = &self.creation_timestamp {
            parse_rfc3339(ts).map_err(|m| ValidationError::new("creationTimestamp", m))?;
        }
        Ok(())
    }
}

/// Which form an object name must have (see [`Kind::name_rule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
    Label,
    /// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (host names).
    Subdomain,
}

/// Check a DNS-1123 label: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit, 1 to 63 characters. The error says why not.
pub fn validate_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "{s:?} is {} characters long, at most {DNS1123_LABEL_MAX} are allowed",
            s.len()
        ));
    }
    label_chars(s).map_err(|why| format!("{s:?} is not a DNS-1123 label: {why}"))
}

/// Check a DNS-1123 subdomain: one or more DNS-1123 labels joined by `.`, at most 253
/// characters in all. The error says why not.
pub fn validate_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "{s:?} is {} characters long, at most {DNS1123_SUBDOMAIN_MAX} are allowed",
            s.len()
        ));
    }
    for part in s.split('.') {
        let why = if part.is_empty() {
            Err("it has an empty part between dots".to_string())
        } else if part.len() > DNS1123_LABEL_MAX {
            Err(format!(
                "its part {part:?} is longer than {DNS1123_LABEL_MAX} characters"
            ))
        } else {
            label_chars(part)
        };
        why.map_err(|why| format!("{s:?} is not a DNS-1123 subdomain: {why}"))?;
    }
    Ok(())
}

/// The character rules of one DNS-1123 label (length checked by the caller).
fn label_chars(s: &str) -> Result<(), String> {
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(if c.is_ascii_uppercase() {
            format!("uppercase {c:?}; only lowercase letters, digits and '-' are allowed")
        } else {
            format!("{c:?} is not allowed; only lowercase letters, digits and '-' are")
        });
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Check a label key: `name` or `prefix/name`, where the prefix is a DNS-1123 subdomain
/// and the name is 1 to 63 characters of letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit (the Kubernetes rule).
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            validate_dns1123_subdomain(prefix)
                .map_err(|m| format!("label key {key:?}: prefix {m}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(format!(
            "label key {key:?}: the name part must not be empty"
        ));
    }
    label_name_chars(name).map_err(|why| format!("label key {key:?}: {why}"))
}

/// Check a label value: empty, or 1 to 63 characters of letters, digits, `-`, `_` and
/// `.`, starting and ending with a letter or digit.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    label_name_chars(value).map_err(|why| format!("label value {value:?}: {why}"))
}

fn label_name_chars(s: &str) -> Result<(), String> {
    if s.len() > LABEL_VALUE_MAX {
        return Err(format!(
            "is {} characters long, at most {LABEL_VALUE_MAX} are allowed",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{c:?} is not allowed; only letters, digits, '-', '_' and '.' are"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Check every key and value of a label map (or a selector); the error field is
/// `["key"]`, relative to the map.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    for (k, v) in labels {
        let field = format!("[{k:?}]");
        validate_label_key(k).map_err(|m| ValidationError::new(&field, m))?;
        validate_label_value(v).map_err(|m| ValidationError::new(&field, m))?;
    }
    Ok(())
}

/// Check a MAC address written as six pairs of hex digits separated by `:`
/// (`0a:58:0a:f4:01:02`, either case); multicast and all-zero addresses are refused, as
/// no interface has one.
pub fn validate_mac(mac: &str) -> Result<(), String> {
    let bad = || format!("{mac:?} is not a MAC address such as \"0a:58:0a:f4:01:02\"");
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut bytes = [0u8; 6];
    for (b, part) in bytes.iter_mut().zip(&parts) {
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if bytes == [0; 6] {
        return Err(format!("{mac:?} is the all-zero MAC address"));
    }
    if bytes[0] & 1 == 1 {
        return Err(format!("{mac:?} is a multicast MAC address"));
    }
    Ok(())
}

/// Format a time as RFC 3339 UTC with whole seconds: `2024-05-01T12:00:00Z` (times before
/// 1970 are clamped to the epoch).
pub fn format_rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parse an RFC 3339 timestamp (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`;
/// `t` and `z` accepted in lowercase too). The error says what is wrong.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let bad = || format!("{s:?} is not an RFC 3339 time such as \"2024-05-01T12:00:00Z\"");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        let digits = &frac[..n.min(9)];
        nanos = digits.parse::<u32>().map_err(|_| bad())? * 10u32.pow(9 - digits.len() as u32);
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return Err(bad()),
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day == 0
        || day > month_days[month as usize - 1]
        || hour > 23
        || min > 59
        || sec > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec) - offset_secs;
    if secs < 0 {
        return Err(format!("{s:?} is before 1970"));
    }
    Ok(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(validate_dns1123_label("a").is_ok());
        assert!(validate_dns1123_label("pod-1").is_ok());
        assert!(validate_dns1123_label(&"a".repeat(63)).is_ok());
        let e = validate_dns1123_label(&"a".repeat(64)).unwrap_err();
        assert!(e.contains("at most 63"), "{e}");
        let e = validate_dns1123_label("Web").unwrap_err();
        assert!(e.contains("uppercase 'W'"), "{e}");
        let e = validate_dns1123_label("-a").unwrap_err();
        assert!(e.contains("start and end"), "{e}");
        assert!(validate_dns1123_label("a-").is_err());
        assert!(validate_dns1123_label("a.b").is_err());
        assert!(validate_dns1123_label("a_b").is_err());
        assert!(validate_dns1123_label("").is_err());
    }

    #[test]
    fn dns_subdomains() {
        assert!(validate_dns1123_subdomain("node-1.example.com").is_ok());
        assert!(validate_dns1123_subdomain("a").is_ok());
        let e = validate_dns1123_subdomain("a..b").unwrap_err();
        assert!(e.contains("empty part"), "{e}");
        assert!(validate_dns1123_subdomain(".a").is_err());
        assert!(validate_dns1123_subdomain("a.-b").is_err());
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        assert_eq!(long.len(), 255);
        let e = validate_dns1123_subdomain(&long).unwrap_err();
        assert!(e.contains("at most 253"), "{e}");
        let e = validate_dns1123_subdomain(&format!("{}.b", "a".repeat(64))).unwrap_err();
        assert!(e.contains("longer than 63"), "{e}");
    }

    #[test]
    fn label_keys_and_values() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("app.kubernetes.io/name").is_ok());
        assert!(validate_label_key("Tier_1.x").is_ok());
        assert!(validate_label_key("/x").is_err());
        assert!(validate_label_key("a/").is_err());
        assert!(validate_label_key("Bad_Prefix/x").is_err());
        assert!(validate_label_key("-x").is_err());
        assert!(validate_label_key(&"k".repeat(64)).is_err());
        assert!(validate_label_key("a b").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("v1.2_beta-3").is_ok());
        assert!(validate_label_value("v1 ").is_err());
        assert!(validate_label_value("_x").is_err());
        let e = validate_label_value(&"v".repeat(64)).unwrap_err();
        assert!(e.contains("at most 63"), "{e}");
    }

    #[test]
    fn macs() {
        assert!(validate_mac("0a:58:0a:f4:01:02").is_ok());
        assert!(validate_mac("0A:58:0A:F4:01:02").is_ok());
        assert!(validate_mac("0a:58:0a:f4:01").is_err());
        assert!(validate_mac("0a-58-0a-f4-01-02").is_err());
        assert!(validate_mac("0a:58:0a:f4:01:2").is_err());
        assert!(validate_mac("0a:58:0a:f4:01:+2").is_err());
        assert!(validate_mac("0g:58:0a:f4:01:02").is_err());
        assert!(validate_mac("00:00:00:00:00:00")
            .unwrap_err()
            .contains("all-zero"));
        assert!(validate_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(format_rfc3339(t), "2024-05-01T12:00:00Z");
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00Z").unwrap(), t);
        assert_eq!(parse_rfc3339("2024-05-01T14:00:00+02:00").unwrap(), t);
        assert_eq!(
            parse_rfc3339("2024-05-01t12:00:00.25z").unwrap(),
            t + Duration::from_millis(250)
        );
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59Z")
                .map(format_rfc3339)
                .unwrap(),
            "2000-02-29T23:59:59Z"
        );
        for bad in [
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "2024-13-01T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00.Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revision_helpers() {
        let mut m = ObjectMeta::named("x");
        assert_eq!(m.revision(), None);
        m.set_revision(42);
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.revision(), Some(42));
        m.set_creation_time(UNIX_EPOCH);
        assert_eq!(
            m.creation_timestamp.as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
    }
}
