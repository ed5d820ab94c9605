//! The in-memory view of the log: where it starts (the compacted prefix ends at the
//! *log start* index, whose term is kept), for every live entry its term and where its
//! record sits on disk, plus a byte-bounded cache of the newest entries.
//!
//! Entries that are appended but not yet synced have no disk location and are always
//! in the cache; the cache only gives up entries from its old end, and only those
//! already on disk. This file must not do I/O: reading an evicted entry back is the
//! caller's job, using the location kept here.

use std::collections::VecDeque;

use raft::eraftpb::Entry;

/// Where an entry's record is: segment, byte offset of the record header, payload size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryLocation {
    pub segment_seq: u64,
    pub offset_bytes: u64,
    pub payload_len_bytes: u32,
}

#[derive(Clone, Copy, Debug)]
struct EntryMeta {
    term: u64,
    /// `None` until the entry's record has been written and synced.
    location: Option<EntryLocation>,
}

/// Approximate memory held by a cached entry; only used to bound the cache.
fn cached_size_bytes(entry: &Entry) -> u64 {
    const FIXED_OVERHEAD_BYTES: u64 = 64;
    (entry.data.len() + entry.context.len()) as u64 + FIXED_OVERHEAD_BYTES
}

#[derive(Debug)]
pub(crate) struct EntryLog {
    start_index: u64,
    start_term: u64,
    /// `metas[i]` describes index `start_index + 1 + i`.
    metas: VecDeque<EntryMeta>,
    /// The newest `cache.len()` entries, ending at `last_index()`.
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    cache_limit_bytes: u64,
}

impl EntryLog {
    pub fn new(cache_limit_bytes: u64) -> Self {
        EntryLog {
            start_index: 0,
            start_term: 0,
            metas: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_limit_bytes,
        }
    }

    pub fn start_index(&self) -> u64 {
        self.start_index
    }

    pub fn start_term(&self) -> u64 {
        self.start_term
    }

    pub fn first_index(&self) -> u64 {
        self.start_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.start_index + self.metas.len() as u64
    }

    fn meta(&self, index: u64) -> Option<&EntryMeta> {
        let offset = index.checked_sub(self.first_index())?;
        self.metas.get(usize::try_from(offset).ok()?)
    }

    /// Term of `index`, including the log start's own index; `None` outside the log.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.start_index {
            return Some(self.start_term);
        }
        self.meta(index).map(|meta| meta.term)
    }

    pub fn location(&self, index: u64) -> Option<EntryLocation> {
        self.meta(index).and_then(|meta| meta.location)
    }

    pub fn cached(&self, index: u64) -> Option<&Entry> {
        let cache_first_index = self.last_index() + 1 - self.cache.len() as u64;
        let offset = index.checked_sub(cache_first_index)?;
        self.cache.get(usize::try_from(offset).ok()?)
    }

    /// Checks that an entry at `index` may be added: above the log start, no gap.
    pub fn check_next_index(&self, index: u64) -> Result<(), String> {
        if index <= self.start_index {
            return Err(format!(
                "entry index {index} is at or below the log start {}",
                self.start_index
            ));
        }
        if index > self.last_index() + 1 {
            return Err(format!(
                "entry index {index} leaves a gap after the last index {}",
                self.last_index()
            ));
        }
        Ok(())
    }

    /// Drops every entry at `index` and above.
    pub fn truncate_from(&mut self, index: u64) {
        let keep_len = index
            .saturating_sub(self.first_index())
            .min(self.metas.len() as u64) as usize;
        let dropped_count = self.metas.len() - keep_len;
        self.metas.truncate(keep_len);
        // The cache ends at the old last index, so its newest `dropped_count` go too.
        for _ in 0..dropped_count.min(self.cache.len()) {
            let entry = self.cache.pop_back().expect("cache is not empty");
            self.cache_bytes -= cached_size_bytes(&entry);
        }
    }

    /// Adds `entry` as the new last entry, first dropping any stored entries at its index
    /// and above (raft overwrites a conflicting suffix). The caller has checked the
    /// index with [`EntryLog::check_next_index`].
    pub fn push(&mut self, entry: Entry, location: Option<EntryLocation>) {
        debug_assert!(self.check_next_index(entry.index).is_ok());
        self.truncate_from(entry.index);
        self.metas.push_back(EntryMeta {
            term: entry.term,
            location,
        });
        self.cache_bytes += cached_size_bytes(&entry);
        self.cache.push_back(entry);
        self.evict();
    }

    /// Records where a synced entry's record is. Records of one batch are passed in
    /// write order, so when a batch wrote an index twice the later record wins; a
    /// record whose entry has since been overwritten (other term) or dropped is ignored.
    pub fn set_location(&mut self, index: u64, term: u64, location: EntryLocation) {
        let Some(offset) = index.checked_sub(self.first_index()) else {
            return;
        };
        if let Some(meta) = self.metas.get_mut(offset as usize) {
            if meta.term == term {
                meta.location = Some(location);
            }
        }
    }

    /// The log now starts after `index` (of term `term`): everything up to it is
    /// compacted. Entries above it are kept only if the log agrees at `index`.
    pub fn advance_start(&mut self, index: u64, term: u64) -> Result<(), String> {
        if index < self.start_index || (index == self.start_index && term != self.start_term) {
            return Err(format!(
                "log start ({index}, term {term}) goes back from ({}, term {})",
                self.start_index, self.start_term
            ));
        }
        if self.term(index) == Some(term) {
            let drop_count = (index - self.start_index) as usize;
            self.metas.drain(..drop_count);
            while self.cache.len() > self.metas.len() {
                let entry = self.cache.pop_front().expect("cache is not empty");
                self.cache_bytes -= cached_size_bytes(&entry);
            }
        } else {
            self.metas.clear();
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.start_index = index;
        self.start_term = term;
        Ok(())
    }

    /// Drops every entry; the log starts after `index` (of term `term`) from now on.
    pub fn reset(&mut self, index: u64, term: u64) {
        self.metas.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.start_index = index;
        self.start_term = term;
    }

    /// Shrinks the cache to its byte budget, giving up only entries that are on disk.
    pub fn evict(&mut self) {
        while self.cache_bytes > self.cache_limit_bytes {
            let front_index = self.last_index() + 1 - self.cache.len() as u64;
            if self.location(front_index).is_none() {
                break;
            }
            let entry = self
                .cache
                .pop_front()
                .expect("a cached entry has a location");
            self.cache_bytes -= cached_size_bytes(&entry);
        }
    }

    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::from(vec![0u8; 100]),
            ..Default::default()
        }
    }

    fn on_disk(index: u64) -> Option<EntryLocation> {
        Some(EntryLocation {
            segment_seq: 1,
            offset_bytes: index * 1000,
            payload_len_bytes: 120,
        })
    }

    #[test]
    fn a_conflicting_append_replaces_the_suffix() {
        let mut log = EntryLog::new(u64::MAX);
        for index in 1..=5 {
            log.push(entry(index, 1), on_disk(index));
        }
        log.push(entry(3, 2), None);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(4), None);
        assert_eq!(log.cached(3).unwrap().term, 2);
        assert_eq!(log.location(3), None);
    }

    #[test]
    fn unsynced_entries_stay_cached_past_the_budget() {
        let mut log = EntryLog::new(0);
        log.push(entry(1, 1), None);
        log.push(entry(2, 1), None);
        assert!(log.cached(1).is_some() && log.cached(2).is_some());
        log.set_location(1, 1, on_disk(1).unwrap());
        log.evict();
        assert!(log.cached(1).is_none(), "synced entry should be evicted");
        assert!(log.cached(2).is_some(), "unsynced entry must stay");
        assert_eq!(log.location(1), on_disk(1));
    }

    #[test]
    fn a_write_below_the_cache_keeps_the_cache_a_suffix() {
        let mut log = EntryLog::new(400);
        for index in 1..=10 {
            log.push(entry(index, 1), on_disk(index));
        }
        assert!(log.cached(1).is_none());
        log.push(entry(2, 2), None);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.cached(2).unwrap().term, 2);
        assert!(log.cached(1).is_none());
        assert_eq!(log.term(1), Some(1));
    }

    #[test]
    fn a_new_log_start_keeps_only_agreeing_entries_above_it() {
        let mut log = EntryLog::new(u64::MAX);
        for index in 1..=5 {
            log.push(entry(index, 1), on_disk(index));
        }
        log.advance_start(3, 1).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (4, 5));
        assert_eq!(log.term(3), Some(1));
        assert!(log.cached(4).is_some());
        log.advance_start(5, 7).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (6, 5));
        assert!(log.advance_start(4, 1).is_err());
    }
}
