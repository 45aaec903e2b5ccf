//! Scenarios as data: a TOML timeline of network faults and operator steps,
//! network parameters, node count and run length.
//!
//! ```toml
//! name = "split-brain"
//! nodes = 6
//! duration_ms = 60000
//! [network]
//! latency = { kind = "uniform", min_ms = 5, max_ms = 40 }
//! [[event]]
//! at_ms = 1000
//! do = "partition"
//! groups = [{ from = 0.0, to = 0.5 }, [3, 4, 5]]
//! [[event]]
//! at_ms = 2000
//! do = "release"
//! node = 0
//! package = "com.example.echo"
//! version = "1.0.0"
//! ```
//!
//! Node sets are lists of indices or fractions of the node count
//! (`{ from = 0.5, to = 1.0 }` = the upper half), so a scenario still means
//! the same thing when `--nodes` overrides its node count.

use serde::Deserialize;

use crate::network::{NetworkParams, NodeIndex};

/// Bound on the nodes of one run.
pub const MAX_NODES: usize = 100_000;
/// Bound on timeline events after expansion (flaps expand to many).
pub const MAX_TIMELINE_EVENTS: usize = 100_000;
/// Bound on a run's virtual length (one day).
pub const MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;

/// A scenario as written in TOML.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (`clawmesh sim --scenario NAME`).
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Node count unless overridden.
    pub nodes: usize,
    /// Virtual length of the run.
    pub duration_ms: u64,
    /// Interval of each node's timer (anti-entropy, retries).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Interval at which convergence is sampled for the report and plot.
    #[serde(default = "default_sample_ms")]
    pub sample_ms: u64,
    /// Virtual time the simulated node I/O takes (blob fetch, verify, deploy).
    #[serde(default = "default_work_ms")]
    pub work_ms: u64,
    /// Whether every live node must agree at the end. A scenario that ends
    /// with the network still split sets this to false, unless it exists to
    /// prove that the checker catches non-convergence.
    #[serde(default = "default_true")]
    pub expect_convergence: bool,
    /// Network faults.
    #[serde(default)]
    pub network: NetworkParams,
    /// The timeline.
    #[serde(default, rename = "event")]
    pub events: Vec<TimelineEvent>,
}

fn default_tick_ms() -> u64 {
    1000
}
fn default_sample_ms() -> u64 {
    250
}
fn default_work_ms() -> u64 {
    50
}
fn default_true() -> bool {
    true
}

/// One step at one virtual time.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineEvent {
    /// When.
    pub at_ms: u64,
    /// What.
    pub step: Step,
}

impl<'de> Deserialize<'de> for TimelineEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // `at_ms` sits beside the step's own fields; take it out so the step
        // can still refuse unknown fields.
        let mut table = toml::Table::deserialize(deserializer)?;
        let at_ms = match table.remove("at_ms") {
            Some(toml::Value::Integer(at)) if at >= 0 => at as u64,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "event at_ms must be a non-negative integer, got {other}"
                )));
            }
            None => return Err(D::Error::missing_field("at_ms")),
        };
        let step = Step::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(TimelineEvent { at_ms, step })
    }
}

/// A set of nodes.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum NodeSet {
    /// These indices.
    List(Vec<NodeIndex>),
    /// Nodes `floor(from * n) .. floor(to * n)` of `n`.
    Fraction {
        /// Start, in `[0, 1]`.
        from: f64,
        /// End, in `[from, 1]`.
        to: f64,
    },
}

impl NodeSet {
    fn resolve(&self, nodes: usize) -> Result<Vec<NodeIndex>, String> {
        match self {
            NodeSet::List(list) => {
                if let Some(bad) = list.iter().find(|n| **n >= nodes) {
                    return Err(format!("node {bad} does not exist (nodes = {nodes})"));
                }
                Ok(list.clone())
            }
            NodeSet::Fraction { from, to } => {
                if !(0.0..=1.0).contains(from) || !(*from..=1.0).contains(to) {
                    return Err(format!(
                        "fraction {from}..{to} is not within 0..1 with from <= to"
                    ));
                }
                let at = |f: f64| ((f * nodes as f64).floor() as usize).min(nodes);
                Ok((at(*from)..at(*to)).collect())
            }
        }
    }
}

/// A timeline step as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Split the network into these groups (nodes in none form one more).
    Partition {
        /// The groups.
        groups: Vec<NodeSet>,
    },
    /// Remove every partition, cut link and isolation.
    Heal,
    /// Cut the link between `a` and `b`.
    Cut {
        /// One end.
        a: NodeIndex,
        /// Other end.
        b: NodeIndex,
    },
    /// Restore the link between `a` and `b`.
    Restore {
        /// One end.
        a: NodeIndex,
        /// Other end.
        b: NodeIndex,
    },
    /// Cut every link of `node`.
    Isolate {
        /// The node.
        node: NodeIndex,
    },
    /// Undo [`Step::Isolate`].
    Rejoin {
        /// The node.
        node: NodeIndex,
    },
    /// Isolate `node` for half of each period and let it back for the other
    /// half, `count` times.
    Flap {
        /// The node.
        node: NodeIndex,
        /// Length of one down+up cycle.
        period_ms: u64,
        /// Number of cycles.
        count: u32,
    },
    /// Crash `node`; with `keep_disk` it restarts from what it persisted.
    Crash {
        /// The node.
        node: NodeIndex,
        /// Whether its disk survives.
        keep_disk: bool,
    },
    /// Restart a crashed `node`.
    Restart {
        /// The node.
        node: NodeIndex,
    },
    /// `node` publishes a signed manifest of `package@version`.
    Publish {
        /// Where.
        node: NodeIndex,
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// `node` signs a deploy intent for `package@version`.
    Release {
        /// Where.
        node: NodeIndex,
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// `node` signs a rollback intent of `package` to `version`.
    Rollback {
        /// Where.
        node: NodeIndex,
        /// Package.
        package: String,
        /// Version to return to.
        version: String,
    },
    /// `node` signs a pause intent for `package`.
    Pause {
        /// Where.
        node: NodeIndex,
        /// Package.
        package: String,
    },
    /// `node` writes a deploy intent signed by a key outside the trust root.
    ForgeRelease {
        /// Where.
        node: NodeIndex,
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// Deploying `package@version` fails (health check) on `nodes`.
    FailVersion {
        /// Package.
        package: String,
        /// Version.
        version: String,
        /// Where it fails.
        nodes: NodeSet,
    },
}

/// An operator step a node performs, or a fact about its local deploy path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Publish a signed manifest.
    Publish {
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// Sign a deploy intent.
    Release {
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// Sign a rollback intent.
    Rollback {
        /// Package.
        package: String,
        /// Version to return to.
        version: String,
    },
    /// Sign a pause intent.
    Pause {
        /// Package.
        package: String,
    },
    /// Write an intent signed by an untrusted key.
    ForgeRelease {
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
    /// From now on deploying `package@version` on this node fails.
    FailDeploys {
        /// Package.
        package: String,
        /// Version.
        version: String,
    },
}

/// A timeline step with node sets resolved for a node count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// See [`Step::Partition`].
    Partition(Vec<Vec<NodeIndex>>),
    /// See [`Step::Heal`].
    Heal,
    /// Cut (`up = false`) or restore a link.
    Link {
        /// One end.
        a: NodeIndex,
        /// Other end.
        b: NodeIndex,
        /// Restored or cut.
        up: bool,
    },
    /// Isolate or rejoin a node.
    Isolation {
        /// The node.
        node: NodeIndex,
        /// Isolated or rejoined.
        isolated: bool,
    },
    /// See [`Step::Crash`].
    Crash {
        /// The node.
        node: NodeIndex,
        /// Whether its disk survives.
        keep_disk: bool,
    },
    /// See [`Step::Restart`].
    Restart {
        /// The node.
        node: NodeIndex,
    },
    /// A command performed on one node.
    Command {
        /// The node.
        node: NodeIndex,
        /// The command.
        command: Command,
    },
}

impl Action {
    /// The nodes the action touches (for the violation trace).
    pub fn nodes(&self) -> Vec<NodeIndex> {
        match self {
            Action::Partition(groups) => groups.iter().flatten().copied().collect(),
            Action::Heal => Vec::new(),
            Action::Link { a, b, .. } => vec![*a, *b],
            Action::Isolation { node, .. }
            | Action::Crash { node, .. }
            | Action::Restart { node }
            | Action::Command { node, .. } => vec![*node],
        }
    }
}

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScenarioError {
    /// The TOML does not parse or does not match the schema.
    #[error("scenario is not valid TOML for the schema: {0}")]
    Parse(String),
    /// A field is out of its bound or inconsistent.
    #[error("scenario {name}: {problem}")]
    Invalid {
        /// Scenario name.
        name: String,
        /// What is wrong, naming the field or event.
        problem: String,
    },
    /// No built-in scenario has this name.
    #[error("no scenario named {name:?}; built-in: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The built-in names, comma-separated.
        known: String,
    },
}

impl Scenario {
    /// Parses a scenario from TOML.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))
    }

    fn invalid(&self, problem: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            name: self.name.clone(),
            problem: problem.into(),
        }
    }

    /// Checks the bounds and resolves the timeline for `nodes` nodes,
    /// sorted by time (steps at the same time keep their written order).
    pub fn timeline(&self, nodes: usize) -> Result<Vec<(u64, Action)>, ScenarioError> {
        if nodes == 0 || nodes > MAX_NODES {
            return Err(self.invalid(format!("nodes = {nodes} is not in 1..={MAX_NODES}")));
        }
        if self.duration_ms == 0 || self.duration_ms > MAX_DURATION_MS {
            return Err(self.invalid(format!(
                "duration_ms = {} is not in 1..={MAX_DURATION_MS}",
                self.duration_ms
            )));
        }
        for (field, value) in [("tick_ms", self.tick_ms), ("sample_ms", self.sample_ms)] {
            if value == 0 || value > self.duration_ms {
                return Err(self.invalid(format!("{field} = {value} is not in 1..=duration_ms")));
            }
        }
        if let Some(problem) = self.network.problem(nodes) {
            return Err(self.invalid(problem));
        }
        let mut out = Vec::new();
        for (index, event) in self.events.iter().enumerate() {
            let at = event.at_ms;
            let context =
                |problem: String| self.invalid(format!("event {index} (at_ms {at}): {problem}"));
            let node_ok = |node: NodeIndex| {
                if node < nodes {
                    Ok(node)
                } else {
                    Err(context(format!(
                        "node {node} does not exist (nodes = {nodes})"
                    )))
                }
            };
            if at > self.duration_ms {
                return Err(context("after the end of the run".into()));
            }
            let command = |node: NodeIndex, command: Command| -> Result<Action, ScenarioError> {
                Ok(Action::Command {
                    node: node_ok(node)?,
                    command,
                })
            };
            match &event.step {
                Step::Partition { groups } => {
                    let groups = groups
                        .iter()
                        .map(|g| g.resolve(nodes))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(context)?;
                    out.push((at, Action::Partition(groups)));
                }
                Step::Heal => out.push((at, Action::Heal)),
                Step::Cut { a, b } | Step::Restore { a, b } => {
                    let up = matches!(event.step, Step::Restore { .. });
                    out.push((
                        at,
                        Action::Link {
                            a: node_ok(*a)?,
                            b: node_ok(*b)?,
                            up,
                        },
                    ));
                }
                Step::Isolate { node } => out.push((
                    at,
                    Action::Isolation {
                        node: node_ok(*node)?,
                        isolated: true,
                    },
                )),
                Step::Rejoin { node } => out.push((
                    at,
                    Action::Isolation {
                        node: node_ok(*node)?,
                        isolated: false,
                    },
                )),
                Step::Flap {
                    node,
                    period_ms,
                    count,
                } => {
                    let node = node_ok(*node)?;
                    if *period_ms < 2 {
                        return Err(context("flap period_ms must be at least 2".into()));
                    }
                    for cycle in 0..u64::from(*count) {
                        let start = at + cycle * period_ms;
                        out.push((
                            start,
                            Action::Isolation {
                                node,
                                isolated: true,
                            },
                        ));
                        out.push((
                            start + period_ms / 2,
                            Action::Isolation {
                                node,
                                isolated: false,
                            },
                        ));
                    }
                }
                Step::Crash { node, keep_disk } => {
                    out.push((
                        at,
                        Action::Crash {
                            node: node_ok(*node)?,
                            keep_disk: *keep_disk,
                        },
                    ));
                }
                Step::Restart { node } => out.push((
                    at,
                    Action::Restart {
                        node: node_ok(*node)?,
                    },
                )),
                Step::Publish {
                    node,
                    package,
                    version,
                } => out.push((
                    at,
                    command(
                        *node,
                        Command::Publish {
                            package: package.clone(),
                            version: version.clone(),
                        },
                    )?,
                )),
                Step::Release {
                    node,
                    package,
                    version,
                } => out.push((
                    at,
                    command(
                        *node,
                        Command::Release {
                            package: package.clone(),
                            version: version.clone(),
                        },
                    )?,
                )),
                Step::Rollback {
                    node,
                    package,
                    version,
                } => out.push((
                    at,
                    command(
                        *node,
                        Command::Rollback {
                            package: package.clone(),
                            version: version.clone(),
                        },
                    )?,
                )),
                Step::Pause { node, package } => out.push((
                    at,
                    command(
                        *node,
                        Command::Pause {
                            package: package.clone(),
                        },
                    )?,
                )),
                Step::ForgeRelease {
                    node,
                    package,
                    version,
                } => out.push((
                    at,
                    command(
                        *node,
                        Command::ForgeRelease {
                            package: package.clone(),
                            version: version.clone(),
                        },
                    )?,
                )),
                Step::FailVersion {
                    package,
                    version,
                    nodes: set,
                } => {
                    for node in set.resolve(nodes).map_err(context)? {
                        out.push((
                            at,
                            command(
                                node,
                                Command::FailDeploys {
                                    package: package.clone(),
                                    version: version.clone(),
                                },
                            )?,
                        ));
                    }
                }
            }
            if out.len() > MAX_TIMELINE_EVENTS {
                return Err(self.invalid(format!("more than {MAX_TIMELINE_EVENTS} timeline steps")));
            }
        }
        if let Some((at, _)) = out.iter().find(|(at, _)| *at > self.duration_ms) {
            return Err(self.invalid(format!(
                "a flap runs past the end of the run (step at {at} ms)"
            )));
        }
        out.sort_by_key(|(at, _)| *at);
        Ok(out)
    }
}

/// The built-in scenarios, name and TOML.
pub const BUILT_IN: [(&str, &str); 7] = [
    ("steady", include_str!("../scenarios/steady.toml")),
    ("split-brain", include_str!("../scenarios/split-brain.toml")),
    (
        "rolling-partition",
        include_str!("../scenarios/rolling-partition.toml"),
    ),
    (
        "flapping-link",
        include_str!("../scenarios/flapping-link.toml"),
    ),
    (
        "churn-rollout",
        include_str!("../scenarios/churn-rollout.toml"),
    ),
    ("quarantine", include_str!("../scenarios/quarantine.toml")),
    ("never-heals", include_str!("../scenarios/never-heals.toml")),
];

/// A built-in scenario by name.
pub fn scenario_by_name(name: &str) -> Result<Scenario, ScenarioError> {
    match BUILT_IN.iter().find(|(known, _)| *known == name) {
        Some((_, text)) => Scenario::from_toml(text),
        None => Err(ScenarioError::Unknown {
            name: name.to_string(),
            known: BUILT_IN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_parses_resolves_and_is_named_as_its_key() {
        for (name, _) in BUILT_IN {
            let scenario = scenario_by_name(name).unwrap();
            assert_eq!(scenario.name, name);
            scenario.timeline(scenario.nodes).unwrap();
            scenario.timeline(40).unwrap();
        }
        assert!(matches!(
            scenario_by_name("nope"),
            Err(ScenarioError::Unknown { .. })
        ));
    }

    #[test]
    fn steps_parse_with_fractions_and_flaps_expand() {
        let text = r#"
name = "t"
nodes = 10
duration_ms = 10000
[[event]]
at_ms = 100
do = "partition"
groups = [{ from = 0.0, to = 0.3 }, [5, 6]]
[[event]]
at_ms = 50
do = "flap"
node = 2
period_ms = 1000
count = 2
"#;
        let scenario = Scenario::from_toml(text).unwrap();
        let timeline = scenario.timeline(10).unwrap();
        assert_eq!(
            timeline[0],
            (
                50,
                Action::Isolation {
                    node: 2,
                    isolated: true
                }
            )
        );
        assert_eq!(
            timeline[1],
            (100, Action::Partition(vec![vec![0, 1, 2], vec![5, 6]]))
        );
        assert_eq!(timeline.len(), 5);
        assert_eq!(
            timeline[4],
            (
                1550,
                Action::Isolation {
                    node: 2,
                    isolated: false
                }
            )
        );
    }

    #[test]
    fn bad_scenarios_name_the_problem() {
        let unknown_field = "name='t'\nnodes=2\nduration_ms=10000\n[[event]]\nat_ms=1\ndo='restart'\nnode=1\nextra=1\n";
        assert!(
            matches!(Scenario::from_toml(unknown_field), Err(ScenarioError::Parse(e)) if e.contains("extra"))
        );
        let missing_at = "name='t'\nnodes=2\nduration_ms=10000\n[[event]]\ndo='heal'\n";
        assert!(
            matches!(Scenario::from_toml(missing_at), Err(ScenarioError::Parse(e)) if e.contains("at_ms"))
        );
        let bad_node = "name='t'\nnodes=2\nduration_ms=10000\n[[event]]\nat_ms=1\ndo='crash'\nnode=5\nkeep_disk=true\n";
        let err = Scenario::from_toml(bad_node)
            .unwrap()
            .timeline(2)
            .unwrap_err();
        assert!(err.to_string().contains("node 5"), "{err}");
        let late = "name='t'\nnodes=2\nduration_ms=10000\n[[event]]\nat_ms=10001\ndo='heal'\n";
        assert!(Scenario::from_toml(late).unwrap().timeline(2).is_err());
    }
}
