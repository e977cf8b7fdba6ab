//! `manifest.toml`: what a model version takes, gives, and where it came from.
//!
//! The format is fixed in `docs/manifest-format.md`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ModelError;

/// The file name of a manifest inside a version folder.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// A parsed `manifest.toml`. Parsing rejects unknown keys; call
/// [`ModelManifest::validate`] (or use [`ModelManifest::from_file`], which
/// does) to check the values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub name: String,
    pub version: String,
    /// TorchScript file name, relative to the version folder.
    pub file: String,
    /// sha256 of the TorchScript file's exact bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// RFC 3339 time stamp; accepted quoted or as a TOML date-time.
    #[serde(deserialize_with = "datetime_as_text")]
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Inputs in the order of the model's input columns.
    pub inputs: Vec<InputSpec>,
    /// Outputs in the order of the model's output columns.
    pub outputs: Vec<OutputSpec>,
    pub provenance: Provenance,
    /// Acceptance metrics the model passed before it was published.
    pub acceptance: BTreeMap<String, AcceptanceMetric>,
    /// The latency the model must meet on the target hardware
    /// (`ironbridge model verify` measures it). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyBudget>,
}

/// `[latency]`: p99 of one forward pass at batch 1 and at `max_batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyBudget {
    pub max_batch: usize,
    pub p99_ms_batch_1: f64,
    pub p99_ms_max_batch: f64,
}

/// One model input: a float32 column with a valid range (inclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub unit: String,
    pub min: f64,
    pub max: f64,
    /// The training distribution: quantile edges (e.g. 11 values: the
    /// minimum, the deciles, the maximum), nondecreasing. Optional; drift is
    /// measured against it where present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<Vec<f64>>,
}

/// One model output column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The distribution of the model's outputs on its training rows, as for
    /// [`InputSpec::quantiles`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<Vec<f64>>,
}

/// Where the model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Path or URI of the training data set.
    pub training_data: String,
    pub training_data_sha256: String,
    /// Git commit of the training code, or `uncommitted`.
    pub code_commit: String,
    pub training_script: String,
}

/// A measured acceptance metric and the bound(s) it had to meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptanceMetric {
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl ModelManifest {
    /// Parses manifest text without validating values; `origin` names the
    /// file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ModelError> {
        toml::from_str(text).map_err(|source| ModelError::ManifestParse {
            path: origin.to_path_buf(),
            source,
        })
    }

    /// Reads, parses and validates a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let manifest = Self::from_toml(&text, path)?;
        manifest
            .validate()
            .map_err(|problems| ModelError::ManifestInvalid {
                path: path.to_path_buf(),
                problems,
            })?;
        Ok(manifest)
    }

    /// Checks every value and returns all problems found, each prefixed with
    /// the key it concerns.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();

        if !is_model_name(&self.name) {
            problems.push(format!(
                "name: {:?} must be non-empty and use only A-Z, a-z, 0-9, '_' and '-'",
                self.name
            ));
        }
        if let Some(problem) = folder_name_problem(&self.version) {
            problems.push(format!("version: {:?} {problem}", self.version));
        }
        if let Some(problem) = plain_file_name_problem(&self.file) {
            problems.push(format!("file: {:?} {problem}", self.file));
        }
        if !is_hex_sha256(&self.sha256) || self.sha256.bytes().any(|b| b.is_ascii_uppercase()) {
            problems.push(format!(
                "sha256: {:?} must be 64 lowercase hex digits",
                self.sha256
            ));
        }
        if !is_rfc3339(&self.created_at) {
            problems.push(format!(
                "created_at: {:?} must be an RFC 3339 time with offset, e.g. 2026-11-24T14:00:00Z",
                self.created_at
            ));
        }

        if self.inputs.is_empty() {
            problems.push("inputs: at least one input is required".to_owned());
        }
        check_unique_names(
            "inputs",
            self.inputs.iter().map(|i| i.name.as_str()),
            &mut problems,
        );
        for (index, input) in self.inputs.iter().enumerate() {
            let place = format!("inputs[{index}] ({})", input.name);
            if !input.min.is_finite() || !input.max.is_finite() {
                problems.push(format!(
                    "{place}: min ({}) and max ({}) must be finite numbers",
                    input.min, input.max
                ));
            } else if input.min > input.max {
                problems.push(format!(
                    "{place}: min ({}) is greater than max ({})",
                    input.min, input.max
                ));
            }
            if let Some(problem) = input.quantiles.as_deref().and_then(quantiles_problem) {
                problems.push(format!("{place}: quantiles {problem}"));
            }
        }
        for (index, output) in self.outputs.iter().enumerate() {
            if let Some(problem) = output.quantiles.as_deref().and_then(quantiles_problem) {
                problems.push(format!(
                    "outputs[{index}] ({}): quantiles {problem}",
                    output.name
                ));
            }
        }

        if self.outputs.is_empty() {
            problems.push("outputs: at least one output is required".to_owned());
        }
        check_unique_names(
            "outputs",
            self.outputs.iter().map(|o| o.name.as_str()),
            &mut problems,
        );

        let provenance = &self.provenance;
        for (key, value) in [
            ("training_data", &provenance.training_data),
            ("code_commit", &provenance.code_commit),
            ("training_script", &provenance.training_script),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("provenance.{key}: must not be empty"));
            }
        }
        if !is_hex_sha256(&provenance.training_data_sha256) {
            problems.push(format!(
                "provenance.training_data_sha256: {:?} must be 64 hex digits",
                provenance.training_data_sha256
            ));
        }

        // A published model states what it passed; an empty table would
        // mean nobody checked it.
        if self.acceptance.is_empty() {
            problems.push("acceptance: at least one metric is required".to_owned());
        }
        for (metric, check) in &self.acceptance {
            acceptance_problems(metric, check, &mut problems);
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|i| i.name.clone()).collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }
}

fn acceptance_problems(metric: &str, check: &AcceptanceMetric, problems: &mut Vec<String>) {
    let place = format!("acceptance.{metric}");
    if metric.trim().is_empty() {
        problems.push("acceptance: metric names must not be empty".to_owned());
    }
    if !check.value.is_finite() {
        problems.push(format!("{place}: value ({}) must be finite", check.value));
    }
    if check.min.is_none() && check.max.is_none() {
        problems.push(format!("{place}: needs a min or a max bound"));
    }
    let bounds_finite =
        check.min.is_none_or(f64::is_finite) && check.max.is_none_or(f64::is_finite);
    if !bounds_finite {
        problems.push(format!("{place}: min and max must be finite numbers"));
        return;
    }
    if let (Some(min), Some(max)) = (check.min, check.max) {
        if min > max {
            problems.push(format!("{place}: min ({min}) is greater than max ({max})"));
        }
    }
    if let Some(min) = check.min {
        if check.value < min {
            problems.push(format!(
                "{place}: value {} is below its bound min = {min}; the model did not pass",
                check.value
            ));
        }
    }
    if let Some(max) = check.max {
        if check.value > max {
            problems.push(format!(
                "{place}: value {} is above its bound max = {max}; the model did not pass",
                check.value
            ));
        }
    }
}

fn check_unique_names<'a>(
    list: &str,
    names: impl Iterator<Item = &'a str>,
    problems: &mut Vec<String>,
) {
    let mut seen = HashSet::new();
    for (index, name) in names.enumerate() {
        if name.trim().is_empty() {
            problems.push(format!("{list}[{index}].name: must not be empty"));
        } else if !seen.insert(name) {
            problems.push(format!(
                "{list}[{index}].name: {name:?} appears more than once"
            ));
        }
    }
}

fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_hex_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The version names a folder, so it must be one plain path component.
fn folder_name_problem(version: &str) -> Option<&'static str> {
    if version.trim().is_empty() {
        Some("must not be empty")
    } else if version.contains(['/', '\\']) || version == "." || version == ".." {
        Some("must be usable as a folder name (no '/', '\\', '.' or '..')")
    } else {
        None
    }
}

/// The model file must lie directly in the version folder: a manifest must
/// not be able to point the loader at some other file on the machine.
fn plain_file_name_problem(file: &str) -> Option<&'static str> {
    if file.is_empty() {
        return Some("must not be empty");
    }
    if file.contains(['/', '\\']) {
        return Some("must be a plain file name in the version folder (no '/' or '\\')");
    }
    let mut components = Path::new(file).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => None,
        _ => Some("must be a plain file name in the version folder (not '.', '..' or absolute)"),
    }
}

fn is_rfc3339(text: &str) -> bool {
    toml::value::Datetime::from_str(text)
        .is_ok_and(|dt| dt.date.is_some() && dt.time.is_some() && dt.offset.is_some())
}

/// Writers may emit `created_at` quoted (as the format shows) or as a bare
/// TOML date-time (what TOML libraries do with a datetime object); both mean
/// the same, so both are accepted and kept as text.
fn datetime_as_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrDatetime {
        Text(String),
        Datetime(toml::value::Datetime),
    }
    Ok(match TextOrDatetime::deserialize(deserializer)? {
        TextOrDatetime::Text(text) => text,
        TextOrDatetime::Datetime(dt) => dt.to_string(),
    })
}

/// Why a quantile list cannot serve as a reference distribution.
fn quantiles_problem(q: &[f64]) -> Option<String> {
    if q.len() < 3 {
        Some(format!("need at least 3 edges, got {}", q.len()))
    } else if q.iter().any(|v| !v.is_finite()) {
        Some("must be finite numbers".to_owned())
    } else if q.windows(2).any(|w| w[0] > w[1]) {
        Some("must not decrease".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "bearing-wear"
version = "1.0.0"
file = "model.pt"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
created_at = "2026-11-24T14:00:00Z"
description = "test"

[[inputs]]
name = "speed_rpm"
unit = "rpm"
min = 0.0
max = 4000.0

[[outputs]]
name = "bearing_wear"
unit = "1"

[provenance]
training_data = "models/training/data/pump-seed-7.csv"
training_data_sha256 = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
code_commit = "uncommitted"
training_script = "models/training/train_bearing_model.py"

[acceptance.mae]
value = 0.012
max = 0.05
[acceptance.r2]
value = 0.97
min = 0.9
"#;

    fn parse(text: &str) -> Result<ModelManifest, ModelError> {
        ModelManifest::from_toml(text, Path::new("test/manifest.toml"))
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text).map(|m| m.validate()) {
            Ok(Ok(())) => Vec::new(),
            Ok(Err(problems)) => problems,
            Err(e) => panic!("did not parse: {e}"),
        }
    }

    #[test]
    fn the_documented_example_parses_and_is_valid() {
        let manifest = parse(GOOD).unwrap();
        assert_eq!(manifest.validate(), Ok(()));
        assert_eq!(manifest.name, "bearing-wear");
        assert_eq!(manifest.inputs[0].max, 4000.0);
        assert_eq!(manifest.outputs[0].unit.as_deref(), Some("1"));
        assert_eq!(manifest.acceptance["r2"].min, Some(0.9));
        assert_eq!(manifest.acceptance["mae"].min, None);
    }

    #[test]
    fn created_at_may_be_a_bare_toml_datetime() {
        let text = GOOD.replace(
            r#"created_at = "2026-11-24T14:00:00Z""#,
            "created_at = 2026-11-24T14:00:00Z",
        );
        let manifest = parse(&text).unwrap();
        assert_eq!(manifest.created_at, "2026-11-24T14:00:00Z");
        assert_eq!(manifest.validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let text = GOOD.replace("unit = \"rpm\"", "unit = \"rpm\"\nscale = 2.0");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("scale"), "{err}");
        assert!(err.contains("test/manifest.toml"), "{err}");
    }

    #[test]
    fn missing_required_keys_are_rejected() {
        let text = GOOD.replace("sha256 = \"0123", "# sha256 = \"0123");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD
            .replace("name = \"bearing-wear\"", "name = \"bearing wear!\"")
            .replace("version = \"1.0.0\"", "version = \"\"")
            .replace("file = \"model.pt\"", "file = \"../other/model.pt\"")
            .replace("sha256 = \"0123456789abcdef", "sha256 = \"0123456789ABCDEF")
            .replace("min = 0.0\nmax = 4000.0", "min = 5000.0\nmax = 4000.0")
            .replace("value = 0.97", "value = 0.5");
        let found = problems(&text);
        let expected_keys = [
            "name:",
            "version:",
            "file:",
            "sha256:",
            "inputs[0] (speed_rpm): min (5000) is greater than max (4000)",
            "acceptance.r2: value 0.5 is below its bound min = 0.9",
        ];
        for key in expected_keys {
            assert!(
                found.iter().any(|p| p.starts_with(key)),
                "no problem starting with {key:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expected_keys.len(), "{found:#?}");
    }

    #[test]
    fn file_must_be_a_plain_name_inside_the_folder() {
        for bad in [
            "../model.pt",
            "/etc/passwd",
            "sub/model.pt",
            "..",
            ".",
            "",
            "a\\b.pt",
        ] {
            let text = GOOD.replace("file = \"model.pt\"", &format!("file = {bad:?}"));
            let found = problems(&text);
            assert!(
                found.iter().any(|p| p.starts_with("file:")),
                "{bad:?} accepted: {found:?}"
            );
        }
        let text = GOOD.replace("file = \"model.pt\"", "file = \"wear-v1.pt\"");
        assert!(problems(&text).is_empty());
    }

    #[test]
    fn inputs_and_outputs_must_be_present_and_uniquely_named() {
        let text = GOOD.replace(
            "[[outputs]]\nname = \"bearing_wear\"\nunit = \"1\"",
            "[[outputs]]\nname = \"wear\"\n[[outputs]]\nname = \"wear\"",
        );
        let found = problems(&text);
        assert_eq!(
            found,
            vec!["outputs[1].name: \"wear\" appears more than once".to_owned()]
        );

        let mut manifest = parse(GOOD).unwrap();
        manifest.inputs.clear();
        manifest.outputs.clear();
        let found = manifest.validate().unwrap_err();
        assert!(found.iter().any(|p| p.starts_with("inputs:")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("outputs:")), "{found:?}");
    }

    #[test]
    fn ranges_must_be_finite() {
        let text = GOOD.replace("max = 4000.0", "max = inf");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("must be finite"), "{found:?}");

        let text = GOOD.replace("min = 0.0", "min = nan");
        assert_eq!(problems(&text).len(), 1);
    }

    #[test]
    fn created_at_must_be_a_full_timestamp() {
        let text = GOOD.replace("2026-11-24T14:00:00Z", "yesterday");
        assert!(problems(&text)[0].starts_with("created_at:"));
        let text = GOOD.replace("2026-11-24T14:00:00Z", "2026-11-24");
        assert!(problems(&text)[0].starts_with("created_at:"));
    }
}
