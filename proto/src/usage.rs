//! What one model turn cost, as the harness reports it in `finish_turn` and the broker stores it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Token and cost accounting of one turn. Every field is optional (a driver reports what its
/// model gives); unknown fields are refused so a misspelt one is not silently dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Input tokens the model read (cache reads and writes included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens the model wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Of the input tokens, those read from the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u64>,
    /// What the turn cost, in US dollars, as the provider prices it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Wall-clock time of the turn, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How many tool calls the model made in the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_is_refused_and_a_partial_one_reads() {
        let err = serde_json::from_str::<Usage>(r#"{"input_token": 3}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `input_token`"),
            "{err}"
        );
        let u: Usage = serde_json::from_str(r#"{"output_tokens": 7}"#).unwrap();
        assert_eq!(u.output_tokens, Some(7));
        assert_eq!(serde_json::to_string(&u).unwrap(), r#"{"output_tokens":7}"#);
    }
}
