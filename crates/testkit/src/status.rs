//! `raftkv status --json`, parsed: what the kit uses to find leaders and lag.

use serde_json::Value;

/// The docs/REFERENCE.md §1 fields of one node's `status --json` line.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `removed`.
    pub role: String,
    pub term: u64,
    /// 0 when the node knows no leader.
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The whole object, for assertions on fields the kit does not model.
    pub json: Value,
}

impl NodeStatus {
    /// Parses one `status --json` line; the error says which field is wrong.
    pub fn parse(line: &str) -> Result<NodeStatus, String> {
        let json: Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("not JSON ({e}): {line:?}"))?;
        let number = |field: &str| {
            json.get(field)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("field {field:?} missing or not a number in {line}"))
        };
        let role = json
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("field \"role\" missing or not a string in {line}"))?
            .to_string();
        Ok(NodeStatus {
            id: number("id")?,
            role,
            term: number("term")?,
            leader_id: number("leader_id")?,
            commit_index: number("commit_index")?,
            applied_index: number("applied_index")?,
            json,
        })
    }

    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }
}
