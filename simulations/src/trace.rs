//! A bounded log of what happened in a run, kept compact while the run goes
//! and rendered only when a violation needs a trace.

use std::collections::VecDeque;

use crate::network::NodeIndex;
use crate::scenario::Action;

/// Entries kept in each ring; older ones are dropped.
pub const TRACE_CAPACITY: usize = 8192;
/// Steps, connection changes, drops and notes printed with one violation.
pub const TRACE_LINES_PER_VIOLATION: usize = 30;
/// Deliveries printed with one violation.
pub const TRACE_DELIVERIES_PER_VIOLATION: usize = 10;

/// Which channel a message travelled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// The document sync stream.
    Sync,
    /// Gossiped heads announcements.
    Heads,
}

/// One thing that happened.
#[derive(Clone, Debug)]
pub enum TraceEntry {
    /// A timeline step was performed.
    Step(Action),
    /// A connection opened or closed.
    Link {
        /// One end.
        a: NodeIndex,
        /// Other end.
        b: NodeIndex,
        /// Opened or closed.
        up: bool,
    },
    /// A message was delivered.
    Delivered {
        /// Sender.
        from: NodeIndex,
        /// Receiver.
        to: NodeIndex,
        /// Channel.
        channel: Channel,
        /// Size.
        bytes: usize,
    },
    /// A message was lost (fault, closed connection or dead receiver).
    Dropped {
        /// Sender.
        from: NodeIndex,
        /// Receiver.
        to: NodeIndex,
        /// Channel.
        channel: Channel,
        /// Why.
        why: &'static str,
    },
    /// A node's own note (rejections, target changes, transitions).
    Note {
        /// The node.
        node: NodeIndex,
        /// What it said.
        text: String,
    },
}

impl TraceEntry {
    fn touches(&self, node: NodeIndex) -> bool {
        match self {
            TraceEntry::Step(action) => {
                let nodes = action.nodes();
                nodes.is_empty() || nodes.contains(&node)
            }
            TraceEntry::Link { a, b, .. } => *a == node || *b == node,
            TraceEntry::Delivered { from, to, .. } | TraceEntry::Dropped { from, to, .. } => {
                *from == node || *to == node
            }
            TraceEntry::Note { node: n, .. } => *n == node,
        }
    }

    fn render(&self) -> String {
        match self {
            TraceEntry::Step(action) => format!("step {action:?}"),
            TraceEntry::Link { a, b, up } => {
                format!("link {a}-{b} {}", if *up { "up" } else { "down" })
            }
            TraceEntry::Delivered {
                from,
                to,
                channel,
                bytes,
            } => format!("deliver {channel:?} {from}->{to} {bytes} B"),
            TraceEntry::Dropped {
                from,
                to,
                channel,
                why,
            } => format!("drop {channel:?} {from}->{to}: {why}"),
            TraceEntry::Note { node, text } => format!("node {node}: {text}"),
        }
    }
}

/// The bounded log: steps, connection changes, drops and node notes in one
/// ring, the far more numerous deliveries in another, so a violation's trace
/// still reaches back to the step that caused it.
#[derive(Debug, Default)]
pub struct Trace {
    significant: VecDeque<(u64, u64, TraceEntry)>,
    deliveries: VecDeque<(u64, u64, TraceEntry)>,
    next_seq: u64,
}

impl Trace {
    /// Records `entry` at virtual time `at`.
    pub fn record(&mut self, at: u64, entry: TraceEntry) {
        let ring = if matches!(entry, TraceEntry::Delivered { .. }) {
            &mut self.deliveries
        } else {
            &mut self.significant
        };
        if ring.len() == TRACE_CAPACITY {
            ring.pop_front();
        }
        ring.push_back((self.next_seq, at, entry));
        self.next_seq += 1;
    }

    /// The last entries touching any of `nodes` (every entry when `nodes` is
    /// empty), oldest first: up to [`TRACE_LINES_PER_VIOLATION`] significant
    /// ones and [`TRACE_DELIVERIES_PER_VIOLATION`] deliveries.
    pub fn excerpt(&self, nodes: &[NodeIndex]) -> Vec<String> {
        let pick = |ring: &VecDeque<(u64, u64, TraceEntry)>, limit: usize| {
            ring.iter()
                .rev()
                .filter(|(_, _, e)| nodes.is_empty() || nodes.iter().any(|n| e.touches(*n)))
                .take(limit)
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut chosen = pick(&self.significant, TRACE_LINES_PER_VIOLATION);
        chosen.extend(pick(&self.deliveries, TRACE_DELIVERIES_PER_VIOLATION));
        chosen.sort_by_key(|(seq, _, _)| *seq);
        chosen
            .into_iter()
            .map(|(_, at, e)| format!("{at:>9} ms  {}", e.render()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_only_entries_touching_the_nodes_and_is_bounded() {
        let mut trace = Trace::default();
        for i in 0..(TRACE_CAPACITY + 10) {
            trace.record(
                i as u64,
                TraceEntry::Delivered {
                    from: i % 3,
                    to: 9,
                    channel: Channel::Sync,
                    bytes: 1,
                },
            );
        }
        trace.record(
            1,
            TraceEntry::Note {
                node: 4,
                text: "hello".into(),
            },
        );
        let lines = trace.excerpt(&[4]);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("node 4: hello"));
        let lines = trace.excerpt(&[0]);
        assert_eq!(lines.len(), TRACE_DELIVERIES_PER_VIOLATION);
        assert!(lines.iter().all(|l| l.contains(" 0->9 ")));
        assert_eq!(trace.deliveries.len(), TRACE_CAPACITY);
        trace.record(
            2,
            TraceEntry::Link {
                a: 0,
                b: 4,
                up: false,
            },
        );
        let lines = trace.excerpt(&[4]);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].contains("link 0-4 down"), "{lines:?}");
    }
}
