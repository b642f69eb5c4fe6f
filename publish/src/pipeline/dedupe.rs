//! Which batches pushed by agents are already in the WAL.
//!
//! A batch is named by `(agent_id, spool_id, seq)`. Per agent the state keeps its current
//! spool, `acked_below` (the agent promises never to send a lower `seq` of that spool
//! again) and the `seq`s at or above it that are in the WAL. A batch below `acked_below` or
//! in the set is a duplicate; a batch of another spool starts the agent's state afresh.
//!
//! The pipeline thread owns the state and changes it in the same step as the WAL append, so
//! the check and the write cannot race. It is rebuilt at startup from the manifest (where it
//! is stored before WAL segments are reclaimed) plus the delivery marks of the retained WAL
//! entries newer than what the manifest holds.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::batch::DeliveryMark;

/// The dedupe state of one agent, as stored in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent.
    pub agent_id: String,
    /// Its current spool.
    pub spool_id: u64,
    /// Batches of the spool below this number are never sent again.
    pub acked_below: u64,
    /// Batches at or above `acked_below` already in the WAL.
    pub seqs: BTreeSet<u64>,
    /// LSN of the newest WAL entry reflected in this state.
    pub lsn: u64,
}

impl AgentState {
    fn has(&self, mark: &DeliveryMark) -> bool {
        self.spool_id == mark.spool_id
            && (mark.seq < self.acked_below || self.seqs.contains(&mark.seq))
    }
}

/// The dedupe state of every agent.
#[derive(Debug, Default)]
pub struct Dedupe {
    agents: HashMap<String, AgentState>,
    /// Agents changed since [`Dedupe::take_dirty`] was last called.
    dirty: HashSet<String>,
}

impl Dedupe {
    /// Starts from the states stored in the manifest.
    pub fn from_stored(stored: impl IntoIterator<Item = AgentState>) -> Dedupe {
        Dedupe {
            agents: stored
                .into_iter()
                .map(|a| (a.agent_id.clone(), a))
                .collect(),
            dirty: HashSet::new(),
        }
    }

    /// Returns whether the batch `mark` names is already in the WAL.
    pub fn is_duplicate(&self, mark: &DeliveryMark) -> bool {
        self.agents.get(&mark.agent_id).is_some_and(|a| a.has(mark))
    }

    /// Records that the batch `mark` names was written as WAL entry `lsn`.
    pub fn record(&mut self, mark: &DeliveryMark, lsn: u64) {
        match self.agents.get_mut(&mark.agent_id) {
            Some(state) if state.spool_id == mark.spool_id => {
                state.acked_below = state.acked_below.max(mark.acked_below);
                state.seqs.insert(mark.seq);
                let keep = state.seqs.split_off(&state.acked_below);
                state.seqs = keep;
                state.lsn = state.lsn.max(lsn);
            }
            _ => {
                let mut seqs = BTreeSet::new();
                if mark.seq >= mark.acked_below {
                    seqs.insert(mark.seq);
                }
                self.agents.insert(
                    mark.agent_id.clone(),
                    AgentState {
                        agent_id: mark.agent_id.clone(),
                        spool_id: mark.spool_id,
                        acked_below: mark.acked_below,
                        seqs,
                        lsn,
                    },
                );
            }
        }
        if !self.dirty.contains(&mark.agent_id) {
            self.dirty.insert(mark.agent_id.clone());
        }
    }

    /// Applies the mark of a WAL entry found at startup, unless the stored state already
    /// reflects it (the manifest was written after that entry).
    pub fn replay(&mut self, mark: &DeliveryMark, lsn: u64) {
        if self
            .agents
            .get(&mark.agent_id)
            .is_some_and(|a| a.lsn >= lsn)
        {
            return;
        }
        self.record(mark, lsn);
    }

    /// Returns the states changed since the last call, to be stored in the manifest.
    pub fn take_dirty(&mut self) -> Vec<AgentState> {
        let mut out: Vec<AgentState> = self
            .dirty
            .drain()
            .filter_map(|id| self.agents.get(&id).cloned())
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// Returns whether some state changed since [`Dedupe::take_dirty`] was last called.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Number of agents known.
    pub fn agents(&self) -> usize {
        self.agents.len()
    }

    /// Returns the state of one agent.
    pub fn agent(&self, agent_id: &str) -> Option<&AgentState> {
        self.agents.get(agent_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(agent: &str, spool: u64, seq: u64, acked_below: u64) -> DeliveryMark {
        DeliveryMark {
            agent_id: agent.into(),
            spool_id: spool,
            seq,
            acked_below,
        }
    }

    #[test]
    fn duplicates_below_acked_below_and_in_the_set() {
        let mut d = Dedupe::default();
        assert!(!d.is_duplicate(&mark("a", 1, 1, 1)));
        d.record(&mark("a", 1, 1, 1), 10);
        d.record(&mark("a", 1, 3, 1), 11);
        assert!(d.is_duplicate(&mark("a", 1, 1, 1)));
        assert!(!d.is_duplicate(&mark("a", 1, 2, 1)));
        assert!(d.is_duplicate(&mark("a", 1, 3, 1)));
        // Another agent with the same numbers is not a duplicate.
        assert!(!d.is_duplicate(&mark("b", 1, 1, 1)));
        // The agent acknowledges everything below 3: 1 and 2 are forgotten (pruned) but
        // still duplicates, because they are below acked_below.
        d.record(&mark("a", 1, 4, 3), 12);
        let a = d.agent("a").unwrap();
        assert_eq!(a.seqs.iter().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!((a.acked_below, a.lsn), (3, 12));
        assert!(d.is_duplicate(&mark("a", 1, 2, 3)));
        assert!(d.is_duplicate(&mark("a", 1, 0, 0)));
        // acked_below never moves back.
        d.record(&mark("a", 1, 5, 1), 13);
        assert_eq!(d.agent("a").unwrap().acked_below, 3);
    }

    #[test]
    fn pruning_keeps_the_state_bounded() {
        let mut d = Dedupe::default();
        for seq in 1..10_000u64 {
            d.record(&mark("a", 7, seq, seq.saturating_sub(4)), seq);
        }
        let a = d.agent("a").unwrap();
        assert!(a.seqs.len() <= 5, "{:?}", a.seqs);
        assert!(d.is_duplicate(&mark("a", 7, 17, 0)));
        assert!(!d.is_duplicate(&mark("a", 7, 10_000, 0)));
    }

    #[test]
    fn a_new_spool_replaces_the_agents_state() {
        let mut d = Dedupe::default();
        d.record(&mark("a", 1, 5, 5), 1);
        d.record(&mark("a", 1, 6, 5), 2);
        assert!(!d.is_duplicate(&mark("a", 2, 5, 0)), "new spool, same seq");
        d.record(&mark("a", 2, 1, 1), 3);
        let a = d.agent("a").unwrap();
        assert_eq!((a.spool_id, a.acked_below, a.lsn), (2, 1, 3));
        assert_eq!(a.seqs.iter().copied().collect::<Vec<_>>(), vec![1]);
        assert!(d.is_duplicate(&mark("a", 2, 1, 1)));
        assert!(!d.is_duplicate(&mark("a", 2, 2, 1)));
        assert_eq!(d.agents(), 1);
    }

    #[test]
    fn replay_skips_marks_the_stored_state_already_has() {
        let mut live = Dedupe::default();
        live.record(&mark("a", 1, 1, 1), 1);
        live.record(&mark("a", 2, 1, 1), 2);
        let stored = live.take_dirty();
        assert!(!live.is_dirty());
        // At startup the manifest has the state as of LSN 2; the WAL still holds LSN 1
        // (spool 1) and a newer LSN 3. Replaying LSN 1 must not bring spool 1 back.
        let mut d = Dedupe::from_stored(stored);
        d.replay(&mark("a", 1, 1, 1), 1);
        d.replay(&mark("a", 2, 1, 1), 2);
        d.replay(&mark("a", 2, 2, 1), 3);
        let a = d.agent("a").unwrap();
        assert_eq!(a.spool_id, 2);
        assert_eq!(a.seqs.iter().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(d.take_dirty().len(), 1);
    }
}
