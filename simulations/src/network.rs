//! The simulated network: link faults (latency, loss, duplication,
//! reordering), partitions into groups, cut links, isolated and crashed
//! nodes, and the overlay of connections the peers see.
//!
//! Nodes do not talk to every other node: like libp2p with kad and
//! gossipsub, each keeps a bounded set of connections
//! ([`NetworkParams::peers_per_node`]). When reachability changes, the
//! overlay keeps every connection that still works, reconnects the pieces of
//! each reachable group (kad finding peers again) and tops up nodes below
//! their degree. Messages travel only over connections; a message in flight
//! on a connection that closes is lost, as on a TCP stream.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::latency::LatencyDist;
use crate::rng::SimRng;

/// Index of a simulated node, `0..nodes`.
pub type NodeIndex = usize;

/// Fault parameters of the whole network, with per-link overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkParams {
    /// Latency of every link without an override.
    pub latency: LatencyDist,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Probability a message is held back by up to `reorder_delay_ms` extra,
    /// so later messages overtake it.
    pub reorder: f64,
    /// Largest extra delay of a reordered message.
    pub reorder_delay_ms: u64,
    /// Each node's clock is off by a uniform draw in `-clock_skew_ms..=clock_skew_ms`.
    pub clock_skew_ms: u64,
    /// Connections each node aims to keep (gossipsub mesh degree analogue).
    pub peers_per_node: usize,
    /// Links whose faults differ from the defaults.
    pub links: Vec<LinkOverride>,
}

impl Default for NetworkParams {
    fn default() -> Self {
        NetworkParams {
            latency: LatencyDist::default(),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay_ms: 50,
            clock_skew_ms: 0,
            peers_per_node: 6,
            links: Vec::new(),
        }
    }
}

/// Faults of one link (both directions) that differ from the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOverride {
    /// One end.
    pub a: NodeIndex,
    /// The other end.
    pub b: NodeIndex,
    /// Latency on this link.
    #[serde(default)]
    pub latency: Option<LatencyDist>,
    /// Loss probability on this link.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Duplication probability on this link.
    #[serde(default)]
    pub duplicate: Option<f64>,
    /// Reordering probability on this link.
    #[serde(default)]
    pub reorder: Option<f64>,
}

/// Bound on [`NetworkParams::peers_per_node`].
pub const MAX_PEERS_PER_NODE: usize = 64;

impl NetworkParams {
    /// Why the parameters are unusable for `nodes` nodes, if they are.
    pub fn problem(&self, nodes: usize) -> Option<String> {
        let probability = |name: &str, p: f64| {
            (!(0.0..=1.0).contains(&p)).then(|| format!("network.{name} = {p} is not in [0, 1]"))
        };
        if let Some(problem) = self.latency.problem() {
            return Some(format!("network.latency: {problem}"));
        }
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if let Some(problem) = probability(name, p) {
                return Some(problem);
            }
        }
        if self.peers_per_node == 0 || self.peers_per_node > MAX_PEERS_PER_NODE {
            return Some(format!(
                "network.peers_per_node = {} is not in 1..={MAX_PEERS_PER_NODE}",
                self.peers_per_node
            ));
        }
        for link in &self.links {
            if link.a >= nodes || link.b >= nodes || link.a == link.b {
                return Some(format!(
                    "network.links: link {}-{} does not join two of the {nodes} nodes",
                    link.a, link.b
                ));
            }
            if let Some(problem) = link.latency.as_ref().and_then(LatencyDist::problem) {
                return Some(format!("network.links {}-{}: {problem}", link.a, link.b));
            }
            for (name, p) in [
                ("loss", link.loss),
                ("duplicate", link.duplicate),
                ("reorder", link.reorder),
            ] {
                if let Some(problem) = p.and_then(|p| probability(name, p)) {
                    return Some(format!("network.links {}-{}: {problem}", link.a, link.b));
                }
            }
        }
        None
    }
}

/// What happens to one message handed to the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Lost,
    /// Delivered after each of these delays (two entries when duplicated).
    Delivered(Vec<u64>),
}

/// A connection that opened or closed, to be told to both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkChange {
    /// `a` and `b` are now connected.
    Up(NodeIndex, NodeIndex),
    /// `a` and `b` are no longer connected.
    Down(NodeIndex, NodeIndex),
}

/// Reachability and connections of the simulated network.
#[derive(Clone, Debug)]
pub struct Network {
    params: NetworkParams,
    overrides: BTreeMap<(NodeIndex, NodeIndex), LinkOverride>,
    /// Partition group of each node; all zero when healed.
    group: Vec<u32>,
    alive: Vec<bool>,
    isolated: BTreeSet<NodeIndex>,
    cut: BTreeSet<(NodeIndex, NodeIndex)>,
    /// Open connections, each with the epoch it was opened in.
    connections: BTreeMap<(NodeIndex, NodeIndex), u64>,
    neighbours: Vec<BTreeSet<NodeIndex>>,
    next_epoch: u64,
}

fn ordered(a: NodeIndex, b: NodeIndex) -> (NodeIndex, NodeIndex) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Network {
    /// A network of `nodes` live, fully reachable nodes with no connections
    /// yet (call [`Network::rewire`] to open them).
    pub fn new(nodes: usize, params: NetworkParams) -> Self {
        let overrides = params
            .links
            .iter()
            .map(|link| (ordered(link.a, link.b), link.clone()))
            .collect();
        Network {
            params,
            overrides,
            group: vec![0; nodes],
            alive: vec![true; nodes],
            isolated: BTreeSet::new(),
            cut: BTreeSet::new(),
            connections: BTreeMap::new(),
            neighbours: vec![BTreeSet::new(); nodes],
            next_epoch: 1,
        }
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.alive.len()
    }

    /// Whether `node` is running.
    pub fn is_alive(&self, node: NodeIndex) -> bool {
        self.alive.get(node).copied().unwrap_or(false)
    }

    /// Whether any partition, cut link or isolation is in force.
    pub fn is_disrupted(&self) -> bool {
        !self.isolated.is_empty() || !self.cut.is_empty() || self.group.iter().any(|g| *g != 0)
    }

    /// Whether a connection between `a` and `b` could exist now.
    pub fn reachable(&self, a: NodeIndex, b: NodeIndex) -> bool {
        a != b
            && self.is_alive(a)
            && self.is_alive(b)
            && self.group[a] == self.group[b]
            && !self.isolated.contains(&a)
            && !self.isolated.contains(&b)
            && !self.cut.contains(&ordered(a, b))
    }

    /// Splits the nodes into `groups`; nodes in no group form one more group.
    pub fn partition(&mut self, groups: &[Vec<NodeIndex>]) {
        let rest = u32::try_from(groups.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.group.iter_mut().for_each(|g| *g = rest);
        for (index, members) in groups.iter().enumerate() {
            let id = u32::try_from(index).unwrap_or(u32::MAX).saturating_add(1);
            for &node in members {
                if let Some(slot) = self.group.get_mut(node) {
                    *slot = id;
                }
            }
        }
    }

    /// Removes every partition, cut link and isolation.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
        self.cut.clear();
        self.isolated.clear();
    }

    /// Cuts (`up = false`) or restores the link between `a` and `b`.
    pub fn set_link(&mut self, a: NodeIndex, b: NodeIndex, up: bool) {
        if up {
            self.cut.remove(&ordered(a, b));
        } else {
            self.cut.insert(ordered(a, b));
        }
    }

    /// Isolates `node` from everyone (`isolated = true`) or lets it back.
    pub fn set_isolated(&mut self, node: NodeIndex, isolated: bool) {
        if isolated {
            self.isolated.insert(node);
        } else {
            self.isolated.remove(&node);
        }
    }

    /// Marks `node` crashed or running.
    pub fn set_alive(&mut self, node: NodeIndex, alive: bool) {
        if let Some(slot) = self.alive.get_mut(node) {
            *slot = alive;
        }
    }

    /// Epoch of the open connection between `a` and `b`, if there is one.
    pub fn connection(&self, a: NodeIndex, b: NodeIndex) -> Option<u64> {
        self.connections.get(&ordered(a, b)).copied()
    }

    /// The nodes `node` is connected to, in index order.
    pub fn neighbours(&self, node: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.neighbours.get(node).into_iter().flatten().copied()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Brings the overlay in line with reachability: closes connections that
    /// no longer work, reconnects split pieces of each reachable group and
    /// tops up nodes below their degree. Returns the changes, downs first.
    pub fn rewire(&mut self, rng: &mut SimRng) -> Vec<LinkChange> {
        let mut changes = Vec::new();
        let broken: Vec<(NodeIndex, NodeIndex)> = self
            .connections
            .keys()
            .copied()
            .filter(|&(a, b)| !self.reachable(a, b))
            .collect();
        for (a, b) in broken {
            self.disconnect(a, b);
            changes.push(LinkChange::Down(a, b));
        }
        for members in self.reachable_groups() {
            self.join_pieces(&members, rng, &mut changes);
            self.top_up(&members, rng, &mut changes);
        }
        changes
    }

    /// Live, non-isolated nodes grouped by partition group, each sorted.
    fn reachable_groups(&self) -> Vec<Vec<NodeIndex>> {
        let mut groups: BTreeMap<u32, Vec<NodeIndex>> = BTreeMap::new();
        for node in 0..self.nodes() {
            if self.alive[node] && !self.isolated.contains(&node) {
                groups.entry(self.group[node]).or_default().push(node);
            }
        }
        groups.into_values().filter(|g| g.len() > 1).collect()
    }

    fn connect(&mut self, a: NodeIndex, b: NodeIndex, changes: &mut Vec<LinkChange>) {
        let key = ordered(a, b);
        if self.connections.contains_key(&key) || !self.reachable(a, b) {
            return;
        }
        self.connections.insert(key, self.next_epoch);
        self.next_epoch += 1;
        self.neighbours[a].insert(b);
        self.neighbours[b].insert(a);
        changes.push(LinkChange::Up(key.0, key.1));
    }

    fn disconnect(&mut self, a: NodeIndex, b: NodeIndex) {
        self.connections.remove(&ordered(a, b));
        self.neighbours[a].remove(&b);
        self.neighbours[b].remove(&a);
    }

    /// Connects the connected components of `members` (over open,
    /// reachable connections) into one, with a few bridges between each
    /// consecutive pair of pieces.
    fn join_pieces(
        &mut self,
        members: &[NodeIndex],
        rng: &mut SimRng,
        changes: &mut Vec<LinkChange>,
    ) {
        let bridges = (self.params.peers_per_node / 2).max(1);
        // Bounded retries per bridge: a cut link may veto a random pick.
        let attempts = bridges * 8;
        loop {
            let pieces = self.pieces(members);
            if pieces.len() <= 1 {
                return;
            }
            let mut joined = false;
            for pair in pieces.windows(2) {
                let (left, right) = (&pair[0], &pair[1]);
                let mut made = 0;
                for _ in 0..attempts {
                    if made == bridges {
                        break;
                    }
                    let a = left[rng.below(left.len() as u64) as usize];
                    let b = right[rng.below(right.len() as u64) as usize];
                    if self.reachable(a, b) && self.connection(a, b).is_none() {
                        self.connect(a, b, changes);
                        made += 1;
                    }
                }
                if made == 0 {
                    // Random picks all hit cut links: try every pair in order.
                    if let Some((a, b)) = left
                        .iter()
                        .flat_map(|&a| right.iter().map(move |&b| (a, b)))
                        .find(|&(a, b)| self.reachable(a, b))
                    {
                        self.connect(a, b, changes);
                        made = 1;
                    }
                }
                joined |= made > 0;
            }
            if !joined {
                // The pieces cannot be joined (every link between them is cut).
                return;
            }
        }
    }

    /// Connected components of `members`, each sorted, ordered by least member.
    fn pieces(&self, members: &[NodeIndex]) -> Vec<Vec<NodeIndex>> {
        let mut seen = BTreeSet::new();
        let mut pieces = Vec::new();
        for &start in members {
            if !seen.insert(start) {
                continue;
            }
            let mut piece = vec![start];
            let mut stack = vec![start];
            while let Some(node) = stack.pop() {
                for &next in &self.neighbours[node] {
                    if seen.insert(next) {
                        piece.push(next);
                        stack.push(next);
                    }
                }
            }
            piece.sort_unstable();
            pieces.push(piece);
        }
        pieces
    }

    fn top_up(&mut self, members: &[NodeIndex], rng: &mut SimRng, changes: &mut Vec<LinkChange>) {
        let want = self.params.peers_per_node.min(members.len() - 1);
        for &node in members {
            // Bounded attempts: in a small or heavily cut group the degree
            // may be unreachable.
            for _ in 0..want * 4 {
                if self.neighbours[node].len() >= want {
                    break;
                }
                let other = members[rng.below(members.len() as u64) as usize];
                if self.neighbours[other].len() < MAX_PEERS_PER_NODE * 2 {
                    self.connect(node, other, changes);
                }
            }
        }
    }

    /// Decides the fate of one message from `from` to `to`.
    pub fn fate(&self, from: NodeIndex, to: NodeIndex, rng: &mut SimRng) -> Fate {
        let link = self.overrides.get(&ordered(from, to));
        let latency = link
            .and_then(|l| l.latency.as_ref())
            .unwrap_or(&self.params.latency);
        let loss = link.and_then(|l| l.loss).unwrap_or(self.params.loss);
        let duplicate = link
            .and_then(|l| l.duplicate)
            .unwrap_or(self.params.duplicate);
        let reorder = link.and_then(|l| l.reorder).unwrap_or(self.params.reorder);
        if rng.chance(loss) {
            return Fate::Lost;
        }
        let mut delays = vec![self.delay(latency, reorder, rng)];
        if rng.chance(duplicate) {
            delays.push(self.delay(latency, reorder, rng));
        }
        Fate::Delivered(delays)
    }

    fn delay(&self, latency: &LatencyDist, reorder: f64, rng: &mut SimRng) -> u64 {
        let base = latency.sample(rng);
        if rng.chance(reorder) {
            base + rng.between(1, self.params.reorder_delay_ms.max(1))
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wired(nodes: usize, degree: usize, seed: u64) -> (Network, SimRng) {
        let params = NetworkParams {
            peers_per_node: degree,
            ..NetworkParams::default()
        };
        let mut net = Network::new(nodes, params);
        let mut rng = SimRng::new(seed);
        net.rewire(&mut rng);
        (net, rng)
    }

    fn connected(net: &Network, members: &[NodeIndex]) -> bool {
        net.pieces(members).len() == 1
    }

    #[test]
    fn overlay_is_connected_and_degree_bounded() {
        let (net, _) = wired(200, 6, 1);
        let all: Vec<_> = (0..200).collect();
        assert!(connected(&net, &all));
        assert!((0..200).all(|n| net.neighbours(n).count() >= 6));
        assert!(net.connection_count() < 200 * 6);
    }

    #[test]
    fn partition_closes_cross_links_and_heal_rejoins() {
        let (mut net, mut rng) = wired(20, 4, 2);
        let left: Vec<_> = (0..10).collect();
        let right: Vec<_> = (10..20).collect();
        net.partition(&[left.clone(), right.clone()]);
        let changes = net.rewire(&mut rng);
        assert!(changes.iter().any(|c| matches!(c, LinkChange::Down(..))));
        for &a in &left {
            assert!(net.neighbours(a).all(|b| b < 10));
        }
        assert!(connected(&net, &left) && connected(&net, &right));
        net.heal();
        let changes = net.rewire(&mut rng);
        assert!(changes.iter().all(|c| matches!(c, LinkChange::Up(..))));
        assert!(connected(&net, &(0..20).collect::<Vec<_>>()));
    }

    #[test]
    fn crashed_and_isolated_nodes_have_no_connections() {
        let (mut net, mut rng) = wired(10, 3, 3);
        net.set_alive(4, false);
        net.set_isolated(5, true);
        net.rewire(&mut rng);
        assert_eq!(net.neighbours(4).count(), 0);
        assert_eq!(net.neighbours(5).count(), 0);
        let rest: Vec<_> = (0..10).filter(|n| *n != 4 && *n != 5).collect();
        assert!(connected(&net, &rest));
        assert!(net.is_disrupted());
    }

    #[test]
    fn a_cut_link_is_never_reopened() {
        let (mut net, mut rng) = wired(2, 1, 4);
        assert!(net.connection(0, 1).is_some());
        net.set_link(1, 0, false);
        net.rewire(&mut rng);
        assert!(net.connection(0, 1).is_none());
        net.set_link(0, 1, true);
        net.rewire(&mut rng);
        assert!(net.connection(0, 1).is_some());
    }

    #[test]
    fn loss_and_duplication_follow_their_probabilities() {
        let params = NetworkParams {
            loss: 1.0,
            ..NetworkParams::default()
        };
        let net = Network::new(2, params);
        let mut rng = SimRng::new(5);
        assert_eq!(net.fate(0, 1, &mut rng), Fate::Lost);
        let params = NetworkParams {
            duplicate: 1.0,
            links: vec![LinkOverride {
                a: 1,
                b: 0,
                latency: Some(LatencyDist::Fixed { ms: 77 }),
                loss: None,
                duplicate: None,
                reorder: None,
            }],
            ..NetworkParams::default()
        };
        let net = Network::new(2, params);
        assert_eq!(net.fate(0, 1, &mut rng), Fate::Delivered(vec![77, 77]));
    }

    #[test]
    fn parameter_problems_are_named() {
        let params = NetworkParams {
            loss: 1.5,
            ..NetworkParams::default()
        };
        assert!(params.problem(3).unwrap().contains("loss"));
        let params = NetworkParams {
            links: vec![LinkOverride {
                a: 0,
                b: 9,
                latency: None,
                loss: None,
                duplicate: None,
                reorder: None,
            }],
            ..NetworkParams::default()
        };
        assert!(params.problem(3).unwrap().contains("0-9"));
    }
}
