//! [`LabelSelector`]: Kubernetes label selectors (`matchLabels` and `matchExpressions`),
//! as NetworkPolicy and ClusterNetworkPolicy use them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{validate_label_key, validate_label_value, ValidationError};

/// A label selector. Every `matchLabels` pair and every expression must hold (AND); the
/// empty selector `{}` selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One `matchExpressions` item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the label is compared.
    pub operator: SelectorOperator,
    /// The values for `In` / `NotIn` (non-empty); must be empty for `Exists` /
    /// `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// `matchExpressions[].operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector is `{}` (selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Check keys, values and operators; fields are relative (`matchLabels["app"]`,
    /// `matchExpressions[0].operator`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (k, v) in &self.match_labels {
            let f = format!("matchLabels[{k:?}]");
            validate_label_key(k).map_err(|m| ValidationError::new(&f, m))?;
            validate_label_value(v).map_err(|m| ValidationError::new(&f, m))?;
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            r.validate()
                .map_err(|e| e.under(&format!("matchExpressions[{i}]")))?;
        }
        Ok(())
    }

    /// A short human form: `app=web,tier in (a,b)`; `{}` selects everything.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                SelectorOperator::Exists => r.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", r.key),
            });
        }
        if parts.is_empty() {
            "{}".into()
        } else {
            parts.join(",")
        }
    }
}

impl SelectorRequirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => v.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => v.is_some(),
            SelectorOperator::DoesNotExist => v.is_none(),
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        validate_label_key(&self.key).map_err(|m| ValidationError::new("key", m))?;
        match self.operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                if self.values.is_empty() {
                    return Err(ValidationError::new(
                        "values",
                        format!("must not be empty with operator {:?}", self.operator),
                    ));
                }
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                if !self.values.is_empty() {
                    return Err(ValidationError::new(
                        "values",
                        format!("must be empty with operator {:?}", self.operator),
                    ));
                }
            }
        }
        for (i, v) in self.values.iter().enumerate() {
            validate_label_value(v).map_err(|m| ValidationError::new(format!("values[{i}]"), m))?;
        }
        Ok(())
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

    fn sel(yaml: &str) -> LabelSelector {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(sel("{}").matches(&l));
        assert!(sel("{}").matches(&BTreeMap::new()));
        assert!(sel("matchLabels: {app: web}").matches(&l));
        assert!(!sel("matchLabels: {app: db}").matches(&l));
        let e = |op: &str, vals: &str| {
            sel(&format!(
                "matchExpressions: [{{key: tier, operator: {op}, values: [{vals}]}}]"
            ))
        };
        assert!(e("In", "front,back").matches(&l));
        assert!(!e("In", "back").matches(&l));
        assert!(e("NotIn", "back").matches(&l));
        assert!(!e("NotIn", "front").matches(&l));
        assert!(e("NotIn", "front").matches(&labels(&[("app", "web")])));
        assert!(sel("matchExpressions: [{key: tier, operator: Exists}]").matches(&l));
        assert!(!sel("matchExpressions: [{key: tier, operator: DoesNotExist}]").matches(&l));
        assert!(
            !sel("{matchLabels: {app: web}, matchExpressions: [{key: x, operator: Exists}]}")
                .matches(&l),
            "both parts must hold"
        );
    }

    #[test]
    fn selector_validation_names_the_field() {
        let err = |yaml: &str| sel(yaml).validate().unwrap_err();
        let e = err("matchExpressions: [{key: a, operator: In}]");
        assert_eq!(e.field, "matchExpressions[0].values");
        let e = err("matchExpressions: [{key: a, operator: Exists, values: [x]}]");
        assert_eq!(e.field, "matchExpressions[0].values");
        let e = err("matchLabels: {'bad key': x}");
        assert_eq!(e.field, r#"matchLabels["bad key"]"#);
        let r: Result<LabelSelector, _> =
            serde_yaml_ng::from_str("matchExpressions: [{key: a, operator: Has}]");
        assert!(r.unwrap_err().to_string().contains("unknown variant"));
    }
}
