//! Histories of client operations and a linearizability checker for a
//! key-value map, in the style of Knossos and Porcupine: the Wing–Gong
//! search with Lowe's memoization (a set of (linearized ops, model state)
//! already explored), bounded by a step budget.
//!
//! Every operation records when it was invoked and when it completed, and
//! its outcome. An operation that definitely failed is dropped (it had no
//! effect). One whose outcome is unknown (timeout, lost connection,
//! leadership change) may have taken effect at any point after its
//! invocation, or never: it never completes, so the search may place it
//! anywhere after its invocation — or after every other operation, where it
//! affects nothing observed. A read with an unknown outcome tells nothing
//! and is dropped.
//!
//! Gets, puts and deletes are checked per key (linearizability is
//! compositional); a history with scans is checked as a whole against a
//! model of the entire map (meant for the few keys of a fault run).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

/// One key-value operation and, for reads, what it returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// `None`: the key was not found.
    Get {
        key: String,
        value: Option<String>,
    },
    /// Every pair with the prefix, in key order.
    Scan {
        prefix: String,
        pairs: Vec<(String, String)>,
    },
}

impl KvOp {
    fn key(&self) -> Option<&str> {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key } | KvOp::Get { key, .. } => Some(key),
            KvOp::Scan { .. } => None,
        }
    }

    fn is_read(&self) -> bool {
        matches!(self, KvOp::Get { .. } | KvOp::Scan { .. })
    }
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Put { key, value } => write!(f, "put({key}, {value})"),
            KvOp::Delete { key } => write!(f, "delete({key})"),
            KvOp::Get {
                key,
                value: Some(v),
            } => write!(f, "get({key}) -> {v}"),
            KvOp::Get { key, value: None } => write!(f, "get({key}) -> not found"),
            KvOp::Scan { prefix, pairs } => write!(f, "scan({prefix}) -> {pairs:?}"),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (for reads: returned this value).
    Ok,
    /// Definitely had no effect.
    Failed,
    /// May or may not have taken effect.
    Unknown,
}

/// One operation of a history. Times are offsets from the start of the run.
#[derive(Clone, Debug)]
pub struct Operation {
    /// The client (process) that ran it; a client runs one op at a time.
    pub client: u64,
    pub op: KvOp,
    pub invoked: Duration,
    pub completed: Duration,
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        write!(
            f,
            "client {} {} [{outcome}] {:.3}s..{:.3}s",
            self.client,
            self.op,
            self.invoked.as_secs_f64(),
            self.completed.as_secs_f64()
        )
    }
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Not linearizable, with an explanation naming the operations.
    Violation(String),
    /// The search budget ran out before an answer.
    Unknown(String),
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        *self == Verdict::Linearizable
    }
}

/// Search steps per checked partition before giving up with `Unknown`.
pub const DEFAULT_STEP_BUDGET: u64 = 20_000_000;

/// Checks `history`: per key when it has no scans, as a whole otherwise.
pub fn check(history: &[Operation]) -> Verdict {
    check_with_budget(history, DEFAULT_STEP_BUDGET)
}

pub fn check_with_budget(history: &[Operation], budget: u64) -> Verdict {
    let relevant: Vec<&Operation> = history
        .iter()
        .filter(|o| match o.outcome {
            Outcome::Ok => true,
            Outcome::Failed => false,
            Outcome::Unknown => !o.op.is_read(),
        })
        .collect();
    if relevant.iter().any(|o| matches!(o.op, KvOp::Scan { .. })) {
        return search(&relevant, budget);
    }
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &relevant {
        by_key
            .entry(op.op.key().unwrap_or(""))
            .or_default()
            .push(op);
    }
    let mut unknown = None;
    for ops in by_key.values() {
        match search(ops, budget) {
            Verdict::Linearizable => {}
            Verdict::Unknown(why) => unknown = Some(why),
            violation => return violation,
        }
    }
    unknown.map_or(Verdict::Linearizable, Verdict::Unknown)
}

/// The map as the operations so far left it.
type State = BTreeMap<String, String>;

/// Applies `op` to `state`: the new state, or `None` if a read disagrees.
fn step(state: &State, op: &KvOp) -> Option<State> {
    match op {
        KvOp::Put { key, value } => {
            let mut next = state.clone();
            next.insert(key.clone(), value.clone());
            Some(next)
        }
        KvOp::Delete { key } => {
            let mut next = state.clone();
            next.remove(key);
            Some(next)
        }
        KvOp::Get { key, value } => (state.get(key) == value.as_ref()).then(|| state.clone()),
        KvOp::Scan { prefix, pairs } => {
            let seen: Vec<(String, String)> = state
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (seen == *pairs).then(|| state.clone())
        }
    }
}

/// A call or return event in time order, in a doubly linked list.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    /// Index of the matching event (call <-> return).
    partner: usize,
    prev: usize,
    next: usize,
}

/// Sentinel index of the list head.
const HEAD: usize = usize::MAX;

struct Events {
    events: Vec<Event>,
    head: usize,
}

impl Events {
    fn new(ops: &[&Operation]) -> Events {
        // (time, is_return, op): calls sort before returns at equal times,
        // so operations that touch are treated as concurrent.
        let mut order: Vec<(Duration, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoked, false, i));
            let end = match op.outcome {
                Outcome::Unknown => Duration::MAX,
                _ => op.completed,
            };
            order.push((end, true, i));
        }
        order.sort();
        let mut position = vec![[0usize; 2]; ops.len()];
        let mut events = Vec::with_capacity(order.len());
        for (at, (_, is_return, op)) in order.iter().enumerate() {
            position[*op][*is_return as usize] = at;
            events.push(Event {
                op: *op,
                is_call: !is_return,
                partner: 0,
                prev: if at == 0 { HEAD } else { at - 1 },
                next: if at + 1 == order.len() { HEAD } else { at + 1 },
            });
        }
        for event in &mut events {
            event.partner = position[event.op][event.is_call as usize];
        }
        let head = if events.is_empty() { HEAD } else { 0 };
        Events { events, head }
    }

    fn unlink(&mut self, at: usize) {
        let Event { prev, next, .. } = self.events[at];
        if prev == HEAD {
            self.head = next;
        } else {
            self.events[prev].next = next;
        }
        if next != HEAD {
            self.events[next].prev = prev;
        }
    }

    fn relink(&mut self, at: usize) {
        let Event { prev, next, .. } = self.events[at];
        if prev == HEAD {
            self.head = at;
        } else {
            self.events[prev].next = at;
        }
        if next != HEAD {
            self.events[next].prev = at;
        }
    }

    /// Takes a call and its return out of the list (linearizes the op).
    fn lift(&mut self, call: usize) {
        let ret = self.events[call].partner;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Puts them back, in reverse order.
    fn unlift(&mut self, call: usize) {
        let ret = self.events[call].partner;
        self.relink(ret);
        self.relink(call);
    }
}

/// The Wing–Gong / Lowe search over `ops` from the empty map.
fn search(ops: &[&Operation], budget: u64) -> Verdict {
    let mut events = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = State::new();
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // (call event, state before it) for every op linearized so far.
    let mut stack: Vec<(usize, State)> = Vec::new();
    // For the explanation: the deepest point reached.
    let mut deepest: (usize, Vec<usize>, State, usize) = (0, Vec::new(), State::new(), HEAD);
    let mut steps = 0u64;
    let mut at = events.head;
    while events.head != HEAD {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown(format!(
                "gave up after {budget} search steps over {} operations",
                ops.len()
            ));
        }
        if at == HEAD {
            // Only reachable when every remaining event was tried: treat
            // as hitting a return.
            at = events.head;
        }
        let event = events.events[at];
        if event.is_call {
            let op = event.op;
            if let Some(next_state) = step(&state, &ops[op].op) {
                let mut bits = linearized.clone();
                bits[op / 64] |= 1 << (op % 64);
                if cache.insert((bits.clone(), next_state.clone())) {
                    stack.push((at, std::mem::replace(&mut state, next_state)));
                    linearized = bits;
                    events.lift(at);
                    if stack.len() > deepest.0 {
                        deepest = (
                            stack.len(),
                            stack.iter().map(|(e, _)| events.events[*e].op).collect(),
                            state.clone(),
                            events.head,
                        );
                    }
                    at = events.head;
                    continue;
                }
            }
            at = event.next;
        } else {
            // A return: the op it ends must have been linearized by now.
            let Some((call, previous)) = stack.pop() else {
                return violation(ops, &deepest);
            };
            let op = events.events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            events.unlift(call);
            at = events.events[call].next;
        }
    }
    Verdict::Linearizable
}

/// Explains a failed search from the deepest partial linearization found.
fn violation(ops: &[&Operation], deepest: &(usize, Vec<usize>, State, usize)) -> Verdict {
    let (_, order, state, _) = deepest;
    let done: HashSet<usize> = order.iter().copied().collect();
    // The first op (by completion) that could not be placed.
    let stuck = (0..ops.len())
        .filter(|i| !done.contains(i) && ops[*i].outcome == Outcome::Ok)
        .min_by_key(|i| ops[*i].completed);
    let mut text = String::from("history is not linearizable.\n");
    if let Some(i) = stuck {
        text.push_str(&format!(
            "No order of the operations is consistent with this one: {}\n",
            ops[i]
        ));
    }
    text.push_str(&format!(
        "Longest consistent prefix found ({} ops), ending in state {:?}:\n",
        order.len(),
        state
    ));
    for i in order.iter().rev().take(10).rev() {
        text.push_str(&format!("  {}\n", ops[*i]));
    }
    let concurrent: Vec<String> = stuck
        .map(|s| {
            (0..ops.len())
                .filter(|i| {
                    !done.contains(i)
                        && *i != s
                        && ops[*i].invoked <= ops[s].completed
                        && (ops[*i].outcome == Outcome::Unknown
                            || ops[*i].completed >= ops[s].invoked)
                })
                .map(|i| format!("  {}", ops[i]))
                .collect()
        })
        .unwrap_or_default();
    if !concurrent.is_empty() {
        text.push_str("Operations concurrent with it, not placed:\n");
        text.push_str(&concurrent.join("\n"));
        text.push('\n');
    }
    Verdict::Violation(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(client: u64, op: KvOp, from: u64, to: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            op,
            invoked: ms(from),
            completed: ms(to),
            outcome,
        }
    }

    fn put(k: &str, v: &str) -> KvOp {
        KvOp::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn get(k: &str, v: Option<&str>) -> KvOp {
        KvOp::Get {
            key: k.into(),
            value: v.map(str::to_string),
        }
    }

    fn assert_violation(history: &[Operation], mentions: &[&str]) {
        match check(history) {
            Verdict::Violation(text) => {
                for m in mentions {
                    assert!(text.contains(m), "explanation lacks {m:?}:\n{text}");
                }
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_and_concurrent_valid_histories_pass() {
        let history = vec![
            op(1, put("x", "1"), 0, 10, Outcome::Ok),
            op(2, get("x", Some("1")), 20, 30, Outcome::Ok),
            // Concurrent put and get: the get may see either value.
            op(1, put("x", "2"), 40, 60, Outcome::Ok),
            op(2, get("x", Some("1")), 45, 50, Outcome::Ok),
            op(3, get("x", Some("2")), 55, 70, Outcome::Ok),
            op(2, KvOp::Delete { key: "x".into() }, 80, 90, Outcome::Ok),
            op(3, get("x", None), 95, 99, Outcome::Ok),
            op(1, get("y", None), 0, 5, Outcome::Ok),
        ];
        assert_eq!(check(&history), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_may_apply_late_or_never() {
        let never = vec![
            op(1, put("x", "1"), 0, 10, Outcome::Ok),
            op(2, put("x", "2"), 20, 30, Outcome::Unknown),
            op(3, get("x", Some("1")), 40, 50, Outcome::Ok),
        ];
        assert!(check(&never).is_linearizable());
        let late = vec![
            op(1, put("x", "1"), 0, 10, Outcome::Ok),
            op(2, put("x", "2"), 20, 30, Outcome::Unknown),
            op(3, get("x", Some("1")), 40, 50, Outcome::Ok),
            op(3, get("x", Some("2")), 60, 70, Outcome::Ok),
        ];
        assert!(check(&late).is_linearizable());
    }

    #[test]
    fn a_stale_read_fails_naming_it() {
        let history = vec![
            op(1, put("x", "1"), 0, 10, Outcome::Ok),
            op(1, put("x", "2"), 20, 30, Outcome::Ok),
            op(2, get("x", Some("1")), 40, 50, Outcome::Ok),
        ];
        assert_violation(&history, &["get(x) -> 1", "put(x, 2)"]);
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        let history = vec![
            op(1, put("x", "1"), 0, 10, Outcome::Ok),
            op(2, get("x", None), 20, 30, Outcome::Ok),
        ];
        assert_violation(&history, &["get(x) -> not found", "put(x, 1)"]);
    }

    #[test]
    fn a_read_of_a_value_never_written_fails() {
        let history = vec![
            op(1, put("x", "1"), 0, 10, Outcome::Ok),
            op(2, get("x", Some("7")), 20, 30, Outcome::Ok),
        ];
        assert_violation(&history, &["get(x) -> 7"]);
    }

    #[test]
    fn a_read_of_a_write_that_failed_fails() {
        let history = vec![
            op(1, put("x", "1"), 0, 10, Outcome::Ok),
            op(1, put("x", "2"), 20, 30, Outcome::Failed),
            op(2, get("x", Some("2")), 40, 50, Outcome::Ok),
        ];
        assert_violation(&history, &["get(x) -> 2"]);
    }

    #[test]
    fn a_read_seeing_a_write_before_it_was_invoked_fails() {
        let history = vec![
            op(2, get("x", Some("1")), 0, 10, Outcome::Ok),
            op(1, put("x", "1"), 20, 30, Outcome::Ok),
        ];
        assert_violation(&history, &["get(x) -> 1"]);
    }

    #[test]
    fn scans_are_checked_against_the_whole_map() {
        let scan = |pairs: &[(&str, &str)]| KvOp::Scan {
            prefix: "k".into(),
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let valid = vec![
            op(1, put("k1", "a"), 0, 10, Outcome::Ok),
            op(2, put("k2", "b"), 5, 15, Outcome::Ok),
            op(3, scan(&[("k1", "a")]), 6, 12, Outcome::Ok),
            op(3, scan(&[("k1", "a"), ("k2", "b")]), 20, 25, Outcome::Ok),
        ];
        assert!(check(&valid).is_linearizable());
        // A scan that misses an acknowledged write that finished before it.
        let stale = vec![
            op(1, put("k1", "a"), 0, 10, Outcome::Ok),
            op(2, put("k2", "b"), 0, 10, Outcome::Ok),
            op(3, scan(&[("k1", "a")]), 20, 25, Outcome::Ok),
        ];
        assert_violation(&stale, &["scan(k)"]);
    }

    #[test]
    fn many_concurrent_clients_are_checked_within_the_budget() {
        // 8 clients, 300 ops on one key, heavily overlapping: a valid
        // history (each read returns the latest completed write's value or
        // a concurrent one) must be found linearizable quickly.
        let mut history = Vec::new();
        let mut t = 0;
        let mut last = None::<String>;
        for round in 0..60u64 {
            let value = format!("v{round}");
            history.push(op(round % 8, put("x", &value), t, t + 20, Outcome::Ok));
            for c in 0..4u64 {
                let seen = if c % 2 == 0 {
                    last.clone()
                } else {
                    Some(value.clone())
                };
                history.push(op(
                    8 + c,
                    get("x", seen.as_deref()),
                    t + 1,
                    t + 19,
                    Outcome::Ok,
                ));
            }
            last = Some(value);
            t += 25;
        }
        assert_eq!(check(&history), Verdict::Linearizable);
    }
}
