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
//! A compare-and-swap (an etcd `Txn`: if the key's value is X, put Y, else
//! read it) is a read and a conditional write at one point: acknowledged,
//! it swapped only if the value was X, or it was refused and saw the value
//! (which is not X); with an unknown outcome it may have swapped (if the
//! compare held) or not.
//!
//! Values written are unique, so a write whose outcome is unknown and whose
//! value no operation ever saw is left out before the search: if it took
//! effect, nothing observed it before it was overwritten, so the history
//! without it is linearizable exactly when the history with it is (the
//! search would otherwise try to place each one at every point, which
//! crashes under load make expensive).
//!
//! Gets, puts, deletes and swaps are checked per key (linearizability is
//! compositional); scans and the keys under their prefixes are checked
//! together against a model of that part of the map (meant for the few keys
//! of a fault run).

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
    /// If `key`'s value is `expected` (`None`: the key is absent), put
    /// `value`; `swap` is what the reply said.
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
        swap: Swap,
    },
}

/// What a compare-and-swap's reply said.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Swap {
    /// The compare held and the value was put.
    Swapped,
    /// The compare did not hold; the key held this (`None`: absent).
    Refused(Option<String>),
    /// No reply.
    Unknown,
}

impl KvOp {
    fn key(&self) -> Option<&str> {
        match self {
            KvOp::Put { key, .. }
            | KvOp::Delete { key }
            | KvOp::Get { key, .. }
            | KvOp::Cas { key, .. } => Some(key),
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
            KvOp::Cas {
                key,
                expected,
                value,
                swap,
            } => {
                let expected = expected.as_deref().unwrap_or("absent");
                write!(f, "cas({key}, {expected} -> {value}) -> ")?;
                match swap {
                    Swap::Swapped => write!(f, "swapped"),
                    Swap::Refused(seen) => {
                        write!(f, "refused, saw {}", seen.as_deref().unwrap_or("absent"))
                    }
                    Swap::Unknown => write!(f, "?"),
                }
            }
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
    let seen = observed_values(history);
    let relevant: Vec<&Operation> = history
        .iter()
        .filter(|o| match o.outcome {
            Outcome::Ok => true,
            Outcome::Failed => false,
            Outcome::Unknown => match &o.op {
                KvOp::Put { value, .. } | KvOp::Cas { value, .. } => seen.contains(value.as_str()),
                op => !op.is_read(),
            },
        })
        .collect();
    // Scans, and every op on a key under a scanned prefix, form one part;
    // every other key is a part of its own.
    let prefixes: Vec<&str> = relevant
        .iter()
        .filter_map(|o| match &o.op {
            KvOp::Scan { prefix, .. } => Some(prefix.as_str()),
            _ => None,
        })
        .collect();
    let mut parts: BTreeMap<Option<&str>, Vec<&Operation>> = BTreeMap::new();
    for op in &relevant {
        let part = match op.op.key() {
            Some(key) if !prefixes.iter().any(|p| key.starts_with(p)) => Some(key),
            _ => None,
        };
        parts.entry(part).or_default().push(op);
    }
    let mut unknown = None;
    for ops in parts.values() {
        match search(ops, budget) {
            Verdict::Linearizable => {}
            Verdict::Unknown(why) => unknown = Some(why),
            violation => return violation,
        }
    }
    unknown.map_or(Verdict::Linearizable, Verdict::Unknown)
}

/// Every value an acknowledged operation saw (or, for a swap, expected).
fn observed_values(history: &[Operation]) -> HashSet<&str> {
    let mut seen = HashSet::new();
    for o in history.iter().filter(|o| o.outcome == Outcome::Ok) {
        match &o.op {
            KvOp::Get { value, .. } => seen.extend(value.as_deref()),
            KvOp::Scan { pairs, .. } => seen.extend(pairs.iter().map(|(_, v)| v.as_str())),
            KvOp::Cas { expected, swap, .. } => {
                seen.extend(expected.as_deref());
                if let Swap::Refused(value) = swap {
                    seen.extend(value.as_deref());
                }
            }
            KvOp::Put { .. } | KvOp::Delete { .. } => {}
        }
    }
    seen
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
        KvOp::Cas {
            key,
            expected,
            value,
            swap,
        } => {
            let holds = state.get(key) == expected.as_ref();
            match swap {
                Swap::Swapped if !holds => None,
                Swap::Refused(seen) if holds || state.get(key) != seen.as_ref() => None,
                Swap::Refused(_) => Some(state.clone()),
                Swap::Swapped | Swap::Unknown => {
                    let mut next = state.clone();
                    if holds {
                        next.insert(key.clone(), value.clone());
                    }
                    Some(next)
                }
            }
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

    fn cas(k: &str, expected: Option<&str>, v: &str, swap: Swap) -> KvOp {
        KvOp::Cas {
            key: k.into(),
            expected: expected.map(str::to_string),
            value: v.into(),
            swap,
        }
    }

    fn refused(seen: Option<&str>) -> Swap {
        Swap::Refused(seen.map(str::to_string))
    }

    #[test]
    fn swaps_are_checked_as_a_read_and_a_conditional_write() {
        let valid = vec![
            op(1, cas("x", None, "a", Swap::Swapped), 0, 10, Outcome::Ok),
            op(
                2,
                cas("x", None, "b", refused(Some("a"))),
                5,
                15,
                Outcome::Ok,
            ),
            op(
                2,
                cas("x", Some("a"), "c", Swap::Swapped),
                20,
                30,
                Outcome::Ok,
            ),
            op(1, get("x", Some("c")), 35, 40, Outcome::Ok),
        ];
        assert!(check(&valid).is_linearizable());
        // Two swaps from the same value both succeeded: one of them read a
        // value the other had already replaced.
        let lost_update = vec![
            op(1, put("x", "a"), 0, 5, Outcome::Ok),
            op(
                2,
                cas("x", Some("a"), "b", Swap::Swapped),
                10,
                20,
                Outcome::Ok,
            ),
            op(
                3,
                cas("x", Some("a"), "c", Swap::Swapped),
                10,
                20,
                Outcome::Ok,
            ),
        ];
        assert_violation(&lost_update, &["cas(x, a ->"]);
        // A swap that failed although the value was what it expected.
        let wrong_refusal = vec![
            op(1, put("x", "a"), 0, 5, Outcome::Ok),
            op(
                2,
                cas("x", Some("a"), "b", refused(Some("a"))),
                10,
                20,
                Outcome::Ok,
            ),
        ];
        assert_violation(&wrong_refusal, &["refused, saw a"]);
        // A refusal that saw a value the key did not hold.
        let wrong_sight = vec![
            op(1, put("x", "a"), 0, 5, Outcome::Ok),
            op(
                2,
                cas("x", Some("z"), "b", refused(None)),
                10,
                20,
                Outcome::Ok,
            ),
        ];
        assert_violation(&wrong_sight, &["refused, saw absent"]);
        // An unknown swap may have happened (the read sees it) or not.
        for seen in ["a", "b"] {
            let maybe = vec![
                op(1, put("x", "a"), 0, 5, Outcome::Ok),
                op(
                    2,
                    cas("x", Some("a"), "b", Swap::Unknown),
                    10,
                    20,
                    Outcome::Unknown,
                ),
                op(3, get("x", Some(seen)), 30, 35, Outcome::Ok),
            ];
            assert!(check(&maybe).is_linearizable(), "saw {seen}");
        }
    }

    #[test]
    fn unknown_writes_nobody_saw_are_left_out_and_seen_ones_kept() {
        // 40 crashed writes nobody saw, each free to land anywhere: left
        // out, the search is immediate.
        let mut history = vec![op(1, put("x", "a"), 0, 5, Outcome::Ok)];
        for n in 0..40 {
            let value = format!("lost{n}");
            history.push(op(10 + n, put("x", &value), 6, 7, Outcome::Unknown));
        }
        history.push(op(2, get("x", Some("a")), 100, 110, Outcome::Ok));
        assert_eq!(check_with_budget(&history, 10_000), Verdict::Linearizable);
        // A crashed write a read saw took effect: still checked (the read
        // before its invocation cannot see it).
        let seen_early = vec![
            op(1, get("x", Some("b")), 0, 5, Outcome::Ok),
            op(2, put("x", "b"), 10, 20, Outcome::Unknown),
        ];
        assert_violation(&seen_early, &["get(x) -> b"]);
    }

    #[test]
    fn keys_outside_the_scanned_prefix_are_checked_on_their_own() {
        let history = vec![
            op(1, put("k1", "a"), 0, 10, Outcome::Ok),
            op(
                2,
                KvOp::Scan {
                    prefix: "k".into(),
                    pairs: vec![("k1".into(), "a".into())],
                },
                20,
                25,
                Outcome::Ok,
            ),
            op(3, put("r", "1"), 0, 10, Outcome::Ok),
            op(3, get("r", Some("2")), 20, 25, Outcome::Ok),
        ];
        assert_violation(&history, &["get(r) -> 2"]);
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
