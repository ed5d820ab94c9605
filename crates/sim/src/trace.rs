//! The run's trace: a stable hash of every event (true time, node, what
//! happened, message bytes), so two runs of a seed can be compared bit for
//! bit, and a readable log of the notable events for a replay.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// A stable 64-bit hash of `bytes` (FNV-1a).
pub fn fnv(bytes: &[u8]) -> u64 {
    fnv_extend(FNV_OFFSET, bytes)
}

pub struct Trace {
    hash: u64,
    events: u64,
    /// Readable lines, kept only when asked for (a replay).
    log: Option<Vec<String>>,
}

impl Trace {
    pub fn new(keep_log: bool) -> Trace {
        Trace {
            hash: FNV_OFFSET,
            events: 0,
            log: keep_log.then(Vec::new),
        }
    }

    /// Hashes one event.
    pub fn event(&mut self, t_us: u64, node: u64, kind: u8, bytes: &[u8]) {
        self.events += 1;
        self.write(&t_us.to_le_bytes());
        self.write(&node.to_le_bytes());
        self.write(&[kind]);
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    /// Hashes a notable event and logs it readably.
    pub fn note(&mut self, t_us: u64, text: impl FnOnce() -> String) {
        let text = text();
        self.event(t_us, 0, b'n', text.as_bytes());
        if let Some(log) = &mut self.log {
            log.push(format!("{:>10.3}s  {text}", t_us as f64 / 1e6));
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.hash = fnv_extend(self.hash, bytes);
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn take_log(&mut self) -> Vec<String> {
        self.log.take().unwrap_or_default()
    }
}
