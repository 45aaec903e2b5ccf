//! Dependency resolution: which version of every dependency a node links into
//! the skills it runs, solved by `pubgrub`.
//!
//! Scopes: a dependency with `shared = true` has one version per node for every
//! package that shares it (the root skills, their private dependencies and
//! other shared packages); `shared = false` makes it private to its owner. The
//! owner of a root skill's private dependencies is that skill; private
//! dependencies of a private dependency stay in the same skill (they are linked
//! into the same composition); a shared package's private dependencies belong
//! to that shared package. Each (scope, package) is its own pubgrub package, so
//! all scopes are solved together and the result is consistent: a private
//! dependency that itself shares something constrains the shared version.
//!
//! Determinism: the catalog is kept in ordered maps, the highest matching
//! version is tried first, priorities break ties by package identity, and
//! pubgrub itself is deterministic, so the lock depends only on the catalog's
//! contents and the set of roots.
//!
//! Failure is never resolved by picking one side: a shared conflict names every
//! requirer and its range.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use pubgrub::{
    Dependencies, DependencyProvider, DerivationTree, External, PackageResolutionStatistics,
    PubGrubError, Ranges,
};
use semver::Version;

use crate::manifest::{DependencySpec, Manifest, PackageName};

/// Most packages a catalog may hold.
pub const MAX_CATALOG_PACKAGES: usize = 10_000;
/// Most versions of one package a catalog may hold.
pub const MAX_VERSIONS_PER_PACKAGE: usize = 1024;
/// Most (scope, package) pairs one resolution may consider.
pub const MAX_SOLVER_PACKAGES: usize = 1024;
/// Most solver steps (decisions and backtracks) one resolution may take.
pub const MAX_SOLVER_STEPS: usize = 100_000;
/// Most root skills one resolution may have.
pub const MAX_ROOTS: usize = 256;

/// Every known package version and its dependencies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    packages: BTreeMap<PackageName, BTreeMap<Version, Vec<DependencySpec>>>,
}

/// Why a catalog entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The version is already in the catalog with other dependencies.
    #[error("{package}@{version} is already in the catalog with different dependencies")]
    Conflict {
        /// The package.
        package: PackageName,
        /// The version.
        version: Version,
    },
    /// Two dependencies name the same package.
    #[error("{package}@{version} lists dependency {dependency} twice")]
    DuplicateDependency {
        /// The package.
        package: PackageName,
        /// The version.
        version: Version,
        /// The repeated dependency.
        dependency: PackageName,
    },
    /// A package depends on itself.
    #[error("{package}@{version} depends on itself")]
    SelfDependency {
        /// The package.
        package: PackageName,
        /// The version.
        version: Version,
    },
    /// [`MAX_CATALOG_PACKAGES`] or [`MAX_VERSIONS_PER_PACKAGE`] reached.
    #[error("catalog is full: {what} (at most {max})")]
    Full {
        /// Which limit.
        what: String,
        /// The limit.
        max: usize,
    },
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `package@version`. Adding the same entry again is a no-op; adding it
    /// with other dependencies is refused (which of two conflicting manifests
    /// wins is the caller's decision, made the same way on every node).
    pub fn insert(
        &mut self,
        package: PackageName,
        version: Version,
        dependencies: Vec<DependencySpec>,
    ) -> Result<(), CatalogError> {
        let mut names = BTreeSet::new();
        for dep in &dependencies {
            if dep.package == package {
                return Err(CatalogError::SelfDependency { package, version });
            }
            if !names.insert(&dep.package) {
                return Err(CatalogError::DuplicateDependency {
                    package,
                    version,
                    dependency: dep.package.clone(),
                });
            }
        }
        if !self.packages.contains_key(&package) && self.packages.len() >= MAX_CATALOG_PACKAGES {
            return Err(CatalogError::Full {
                what: "packages".to_owned(),
                max: MAX_CATALOG_PACKAGES,
            });
        }
        let versions = self.packages.entry(package.clone()).or_default();
        match versions.get(&version) {
            Some(existing) if *existing == dependencies => Ok(()),
            Some(_) => Err(CatalogError::Conflict { package, version }),
            None if versions.len() >= MAX_VERSIONS_PER_PACKAGE => Err(CatalogError::Full {
                what: format!("versions of {package}"),
                max: MAX_VERSIONS_PER_PACKAGE,
            }),
            None => {
                versions.insert(version, dependencies);
                Ok(())
            }
        }
    }

    /// Adds a manifest's package, version and dependencies.
    pub fn insert_manifest(&mut self, manifest: &Manifest) -> Result<(), CatalogError> {
        self.insert(
            manifest.name.clone(),
            manifest.version.clone(),
            manifest.dependencies.clone(),
        )
    }

    /// The known versions of `package`, lowest first.
    pub fn versions(&self, package: &PackageName) -> impl DoubleEndedIterator<Item = &Version> {
        self.packages
            .get(package)
            .into_iter()
            .flat_map(|v| v.keys())
    }

    /// The dependencies of `package@version`, if known.
    pub fn dependencies(
        &self,
        package: &PackageName,
        version: &Version,
    ) -> Option<&[DependencySpec]> {
        self.packages.get(package)?.get(version).map(Vec::as_slice)
    }

    /// Whether any version of `package` is known.
    pub fn contains_package(&self, package: &PackageName) -> bool {
        self.packages.contains_key(package)
    }
}

/// What a node links, for every root skill it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// The root skills, as asked for.
    pub roots: BTreeMap<PackageName, Version>,
    /// Shared dependencies: one version per node.
    pub shared: BTreeMap<PackageName, Version>,
    /// Private dependencies of each root skill (an entry for every root).
    pub private: BTreeMap<PackageName, BTreeMap<PackageName, Version>>,
    /// Private dependencies of each shared package that has any.
    pub shared_private: BTreeMap<PackageName, BTreeMap<PackageName, Version>>,
}

/// One requirement that took part in a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Who requires it, `package@version` (several versions as
    /// `package@{1.0.0, 1.1.0}`), with its scope when not a root skill.
    pub requirer: String,
    /// What is required (with its scope).
    pub dependency: String,
    /// The range as written in the requirer's manifest.
    pub range: String,
}

fn list_ranges(requirements: &[Requirement]) -> String {
    requirements
        .iter()
        .map(|r| format!("{} requires {}", r.requirer, r.range))
        .collect::<Vec<_>>()
        .join(", ")
}

fn both_or_all(requirements: &[Requirement]) -> &'static str {
    if requirements.len() == 2 {
        "both"
    } else {
        "all of them"
    }
}

fn list_full(requirements: &[Requirement]) -> String {
    requirements
        .iter()
        .map(|r| format!("{} requires {} {}", r.requirer, r.dependency, r.range))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why no lock exists for the catalog and roots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A root skill's version is not in the catalog.
    #[error("root skill {package}@{version} is not in the catalog")]
    UnknownRoot {
        /// The package.
        package: PackageName,
        /// The version asked for.
        version: Version,
    },
    /// The same skill is a root twice: a node runs one version of a skill.
    #[error("root skill {package} is listed twice ({first} and {second})")]
    DuplicateRoot {
        /// The package.
        package: PackageName,
        /// One version.
        first: Version,
        /// The other.
        second: Version,
    },
    /// More than [`MAX_ROOTS`] roots.
    #[error("{count} root skills, at most {max} allowed")]
    TooManyRoots {
        /// Roots given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A dependency names a package the catalog does not have.
    #[error("{requirer} requires {package} {range}, which is not in the catalog")]
    MissingPackage {
        /// The missing package.
        package: PackageName,
        /// Who requires it.
        requirer: String,
        /// The range asked for.
        range: String,
    },
    /// A dependency's range matches no version in the catalog.
    #[error("{requirer} requires {package} {range}, but the catalog has only {available}")]
    NoMatchingVersion {
        /// The package.
        package: PackageName,
        /// Who requires it.
        requirer: String,
        /// The range asked for.
        range: String,
        /// The versions known, comma-separated.
        available: String,
    },
    /// Shared requirements of one package have no version in common.
    #[error("shared dependency {package}: {}; no version satisfies {}", list_ranges(.requirements), both_or_all(.requirements))]
    SharedConflict {
        /// The shared package.
        package: PackageName,
        /// Every requirer and its range.
        requirements: Vec<Requirement>,
    },
    /// Private requirements of one package within one owner have no version in
    /// common.
    #[error("dependency {package} private to {owner}: {}; no version satisfies {}", list_ranges(.requirements), both_or_all(.requirements))]
    PrivateConflict {
        /// The skill (or shared package) owning the private dependency.
        owner: PackageName,
        /// The package.
        package: PackageName,
        /// Every requirer and its range.
        requirements: Vec<Requirement>,
    },
    /// No combination of versions works; these requirements are involved.
    #[error("no set of versions satisfies all of: {}", list_full(.requirements))]
    Unsatisfiable {
        /// The requirements the solver found in conflict.
        requirements: Vec<Requirement>,
    },
    /// The resolution grew past [`MAX_SOLVER_PACKAGES`] or [`MAX_SOLVER_STEPS`].
    #[error("dependency resolution stopped: {0}")]
    TooLarge(String),
}

/// Who owns a private dependency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    Skill(PackageName),
    Shared(PackageName),
}

impl Owner {
    fn name(&self) -> &PackageName {
        match self {
            Self::Skill(name) | Self::Shared(name) => name,
        }
    }
}

/// A package in one scope: what pubgrub solves for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    /// The node itself, depending on every root skill.
    Top,
    /// A root skill.
    Skill(PackageName),
    /// A shared dependency.
    Shared(PackageName),
    /// A private dependency of `owner`.
    Private { owner: Owner, package: PackageName },
}

impl Node {
    fn package(&self) -> Option<&PackageName> {
        match self {
            Self::Top => None,
            Self::Skill(p) | Self::Shared(p) | Self::Private { package: p, .. } => Some(p),
        }
    }

    /// The owner of this node's private dependencies.
    fn owner(&self) -> Option<Owner> {
        match self {
            Self::Top => None,
            Self::Skill(p) => Some(Owner::Skill(p.clone())),
            Self::Shared(p) => Some(Owner::Shared(p.clone())),
            Self::Private { owner, .. } => Some(owner.clone()),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Top => f.write_str("this node"),
            Self::Skill(p) => write!(f, "{p}"),
            Self::Shared(p) => write!(f, "shared {p}"),
            Self::Private { owner, package } => {
                write!(f, "{package} (private to {})", owner.name())
            }
        }
    }
}

/// The solver hit a bound.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LimitExceeded(String);

struct Provider<'a> {
    catalog: &'a Catalog,
    roots: &'a BTreeMap<PackageName, Version>,
    seen: RefCell<BTreeSet<Node>>,
    steps: Cell<usize>,
}

/// The version the virtual top package has.
fn top_version() -> Version {
    Version::new(0, 0, 0)
}

impl DependencyProvider for Provider<'_> {
    type P = Node;
    type V = Version;
    type VS = Ranges<Version>;
    type Priority = (u32, Reverse<usize>, Reverse<Node>);
    type M = String;
    type Err = LimitExceeded;

    fn prioritize(
        &self,
        package: &Node,
        range: &Ranges<Version>,
        stats: &PackageResolutionStatistics,
    ) -> Self::Priority {
        let candidates = match package.package() {
            None => 1,
            Some(name) => self
                .catalog
                .versions(name)
                .filter(|v| range.contains(v))
                .count(),
        };
        // Most-conflicted first, then fewest candidates, then a fixed order.
        (
            stats.conflict_count(),
            Reverse(candidates),
            Reverse(package.clone()),
        )
    }

    fn choose_version(
        &self,
        package: &Node,
        range: &Ranges<Version>,
    ) -> Result<Option<Version>, LimitExceeded> {
        Ok(match package.package() {
            None => Some(top_version()).filter(|v| range.contains(v)),
            Some(name) => self
                .catalog
                .versions(name)
                .rev()
                .find(|v| range.contains(v))
                .cloned(),
        })
    }

    fn get_dependencies(
        &self,
        package: &Node,
        version: &Version,
    ) -> Result<Dependencies<Node, Ranges<Version>, String>, LimitExceeded> {
        {
            let mut seen = self.seen.borrow_mut();
            seen.insert(package.clone());
            if seen.len() > MAX_SOLVER_PACKAGES {
                return Err(LimitExceeded(format!(
                    "more than {MAX_SOLVER_PACKAGES} packages to consider"
                )));
            }
        }
        let (Some(name), Some(owner)) = (package.package(), package.owner()) else {
            return Ok(Dependencies::Available(
                self.roots
                    .iter()
                    .map(|(name, v)| (Node::Skill(name.clone()), Ranges::singleton(v.clone())))
                    .collect(),
            ));
        };
        let Some(deps) = self.catalog.dependencies(name, version) else {
            return Ok(Dependencies::Unavailable(format!(
                "{name}@{version} is not in the catalog"
            )));
        };
        // pubgrub cannot express a package depending on itself; the catalog
        // refuses such entries, this keeps a bad entry from reaching it anyway.
        if deps.iter().any(|dep| dep.package == *name) {
            return Ok(Dependencies::Unavailable(format!(
                "{name}@{version} depends on itself"
            )));
        }
        Ok(Dependencies::Available(
            deps.iter()
                .map(|dep| {
                    let target = if dep.shared {
                        Node::Shared(dep.package.clone())
                    } else {
                        Node::Private {
                            owner: owner.clone(),
                            package: dep.package.clone(),
                        }
                    };
                    (
                        target,
                        dep.range.ranges_over(self.catalog.versions(&dep.package)),
                    )
                })
                .collect(),
        ))
    }

    fn should_cancel(&self) -> Result<(), LimitExceeded> {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        if steps > MAX_SOLVER_STEPS {
            return Err(LimitExceeded(format!(
                "more than {MAX_SOLVER_STEPS} solver steps"
            )));
        }
        Ok(())
    }
}

/// Resolves the dependencies of `roots` (the skills this node runs, each at
/// an exact version) against `catalog`.
pub fn resolve(catalog: &Catalog, roots: &[(PackageName, Version)]) -> Result<Lock, ResolveError> {
    if roots.len() > MAX_ROOTS {
        return Err(ResolveError::TooManyRoots {
            count: roots.len(),
            max: MAX_ROOTS,
        });
    }
    let mut root_map: BTreeMap<PackageName, Version> = BTreeMap::new();
    for (package, version) in roots {
        if let Some(first) = root_map.get(package)
            && first != version
        {
            let (first, second) = if first < version {
                (first.clone(), version.clone())
            } else {
                (version.clone(), first.clone())
            };
            return Err(ResolveError::DuplicateRoot {
                package: package.clone(),
                first,
                second,
            });
        }
        if catalog.dependencies(package, version).is_none() {
            return Err(ResolveError::UnknownRoot {
                package: package.clone(),
                version: version.clone(),
            });
        }
        root_map.insert(package.clone(), version.clone());
    }

    let provider = Provider {
        catalog,
        roots: &root_map,
        seen: RefCell::new(BTreeSet::new()),
        steps: Cell::new(0),
    };
    let selection = match pubgrub::resolve(&provider, Node::Top, top_version()) {
        Ok(selection) => selection,
        Err(PubGrubError::NoSolution(tree)) => return Err(explain(catalog, &tree)),
        Err(PubGrubError::ErrorRetrievingDependencies { source, .. })
        | Err(PubGrubError::ErrorChoosingVersion { source, .. })
        | Err(PubGrubError::ErrorInShouldCancel(source)) => {
            return Err(ResolveError::TooLarge(source.0));
        }
    };

    let mut lock = Lock {
        private: root_map
            .keys()
            .map(|r| (r.clone(), BTreeMap::new()))
            .collect(),
        ..Lock::default()
    };
    for (node, version) in selection.iter() {
        let version = version.clone();
        match node {
            Node::Top => {}
            Node::Skill(p) => {
                lock.roots.insert(p.clone(), version);
            }
            Node::Shared(p) => {
                lock.shared.insert(p.clone(), version);
            }
            Node::Private {
                owner: Owner::Skill(owner),
                package,
            } => {
                lock.private
                    .entry(owner.clone())
                    .or_default()
                    .insert(package.clone(), version);
            }
            Node::Private {
                owner: Owner::Shared(owner),
                package,
            } => {
                lock.shared_private
                    .entry(owner.clone())
                    .or_default()
                    .insert(package.clone(), version);
            }
        }
    }
    Ok(lock)
}

/// A dependency edge found in the solver's explanation.
struct Edge {
    requirer: Node,
    requirer_versions: Vec<Version>,
    dependency: Node,
    allowed: Ranges<Version>,
}

fn collect_leaves(
    tree: &DerivationTree<Node, Ranges<Version>, String>,
    edges: &mut Vec<Edge>,
    others: &mut Vec<String>,
    catalog: &Catalog,
) {
    match tree {
        DerivationTree::Derived(derived) => {
            collect_leaves(&derived.cause1, edges, others, catalog);
            collect_leaves(&derived.cause2, edges, others, catalog);
        }
        DerivationTree::External(External::FromDependencyOf(p, vs_p, dep, vs_dep)) => {
            let requirer_versions: Vec<Version> = match p.package() {
                Some(name) => catalog
                    .versions(name)
                    .filter(|v| vs_p.contains(v))
                    .cloned()
                    .collect(),
                None => vec![top_version()],
            };
            let duplicate = edges.iter().any(|e| {
                e.requirer == *p && e.dependency == *dep && e.requirer_versions == requirer_versions
            });
            if !duplicate {
                edges.push(Edge {
                    requirer: p.clone(),
                    requirer_versions,
                    dependency: dep.clone(),
                    allowed: vs_dep.clone(),
                });
            }
        }
        DerivationTree::External(External::NoVersions(p, _)) => {
            let text = format!("no version of {p} is left that satisfies every requirement");
            if !others.contains(&text) {
                others.push(text);
            }
        }
        DerivationTree::External(External::Custom(p, _, reason)) => {
            let text = format!("{p}: {reason}");
            if !others.contains(&text) {
                others.push(text);
            }
        }
        DerivationTree::External(External::NotRoot(..)) => {}
    }
}

fn requirement(catalog: &Catalog, edge: &Edge) -> Requirement {
    let name = edge.requirer.package();
    let requirer = match (name, edge.requirer_versions.as_slice()) {
        (None, _) => "this node".to_owned(),
        (Some(name), [one]) => format!("{name}@{one}"),
        (Some(name), many) => format!(
            "{name}@{{{}}}",
            many.iter()
                .map(Version::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let requirer = match &edge.requirer {
        Node::Shared(_) => format!("{requirer} (shared)"),
        Node::Private { owner, .. } => format!("{requirer} (private to {})", owner.name()),
        Node::Top | Node::Skill(_) => requirer,
    };
    let dependency_name = edge.dependency.package();
    // The range text as written, from the highest requirer version in play.
    let range = match (name, dependency_name) {
        (Some(name), Some(dep_name)) => edge
            .requirer_versions
            .last()
            .and_then(|v| catalog.dependencies(name, v))
            .and_then(|deps| deps.iter().find(|d| d.package == *dep_name))
            .map(|d| d.range.to_string())
            .unwrap_or_else(|| edge.allowed.to_string()),
        _ => edge.allowed.to_string(),
    };
    Requirement {
        requirer,
        dependency: edge.dependency.to_string(),
        range,
    }
}

/// Turns pubgrub's explanation into the most specific error it supports.
fn explain(
    catalog: &Catalog,
    tree: &DerivationTree<Node, Ranges<Version>, String>,
) -> ResolveError {
    let mut edges = Vec::new();
    let mut others = Vec::new();
    collect_leaves(tree, &mut edges, &mut others, catalog);

    // A requirement no catalog version meets, on its own.
    for edge in &edges {
        let Some(dep_name) = edge.dependency.package() else {
            continue;
        };
        let empty = !catalog.versions(dep_name).any(|v| edge.allowed.contains(v));
        if !empty {
            continue;
        }
        let req = requirement(catalog, edge);
        let available: Vec<String> = catalog.versions(dep_name).map(Version::to_string).collect();
        return if available.is_empty() {
            ResolveError::MissingPackage {
                package: dep_name.clone(),
                requirer: req.requirer,
                range: req.range,
            }
        } else {
            ResolveError::NoMatchingVersion {
                package: dep_name.clone(),
                requirer: req.requirer,
                range: req.range,
                available: available.join(", "),
            }
        };
    }

    // Requirements of one package (in one scope) with no version in common.
    let mut by_dependency: BTreeMap<&Node, Vec<&Edge>> = BTreeMap::new();
    for edge in &edges {
        by_dependency
            .entry(&edge.dependency)
            .or_default()
            .push(edge);
    }
    for (dependency, group) in &by_dependency {
        if group.len() < 2 {
            continue;
        }
        let common = group
            .iter()
            .fold(Ranges::full(), |acc: Ranges<Version>, e| {
                acc.intersection(&e.allowed)
            });
        let Some(name) = dependency.package() else {
            continue;
        };
        if catalog.versions(name).any(|v| common.contains(v)) {
            continue;
        }
        let mut requirements: Vec<Requirement> =
            group.iter().map(|e| requirement(catalog, e)).collect();
        // Named in a fixed order, whatever order the solver met them in.
        requirements.sort_by(|a, b| a.requirer.cmp(&b.requirer).then(a.range.cmp(&b.range)));
        match dependency {
            Node::Shared(package) => {
                return ResolveError::SharedConflict {
                    package: package.clone(),
                    requirements,
                };
            }
            Node::Private { owner, package } => {
                return ResolveError::PrivateConflict {
                    owner: owner.name().clone(),
                    package: package.clone(),
                    requirements,
                };
            }
            Node::Top | Node::Skill(_) => {}
        }
    }

    let mut requirements: Vec<Requirement> = edges
        .iter()
        .filter(|e| e.requirer != Node::Top)
        .map(|e| requirement(catalog, e))
        .collect();
    requirements.sort_by(|a, b| {
        (&a.requirer, &a.dependency, &a.range).cmp(&(&b.requirer, &b.dependency, &b.range))
    });
    requirements.extend(others.into_iter().map(|text| Requirement {
        requirer: "the solver".to_owned(),
        dependency: "found that".to_owned(),
        range: text,
    }));
    ResolveError::Unsatisfiable { requirements }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::VersionRange;
    use proptest::prelude::*;

    fn n(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn dep(package: &str, range: &str, shared: bool) -> DependencySpec {
        DependencySpec {
            package: n(package),
            range: VersionRange::parse(range).unwrap(),
            shared,
        }
    }

    fn catalog(entries: &[(&str, &str, Vec<DependencySpec>)]) -> Catalog {
        let mut c = Catalog::new();
        for (p, ver, deps) in entries {
            c.insert(n(p), v(ver), deps.clone()).unwrap();
        }
        c
    }

    fn root(p: &str, ver: &str) -> (PackageName, Version) {
        (n(p), v(ver))
    }

    #[test]
    fn shared_unify_and_private_sit_side_by_side() {
        let c = catalog(&[
            (
                "com.a.one",
                "1.0.0",
                vec![
                    dep("com.x.codec", "^1.2", true),
                    dep("com.p.util", "^1", false),
                ],
            ),
            (
                "com.b.two",
                "1.0.0",
                vec![
                    dep("com.x.codec", ">=1.0, <1.4", true),
                    dep("com.p.util", "^2", false),
                ],
            ),
            ("com.x.codec", "1.0.0", vec![]),
            ("com.x.codec", "1.2.0", vec![]),
            ("com.x.codec", "1.3.0", vec![]),
            ("com.x.codec", "1.5.0", vec![]),
            ("com.p.util", "1.0.0", vec![]),
            ("com.p.util", "1.1.0", vec![]),
            ("com.p.util", "2.0.0", vec![]),
        ]);
        let lock = resolve(
            &c,
            &[root("com.a.one", "1.0.0"), root("com.b.two", "1.0.0")],
        )
        .unwrap();
        assert_eq!(
            lock.shared,
            BTreeMap::from([(n("com.x.codec"), v("1.3.0"))])
        );
        assert_eq!(
            lock.private[&n("com.a.one")],
            BTreeMap::from([(n("com.p.util"), v("1.1.0"))])
        );
        assert_eq!(
            lock.private[&n("com.b.two")],
            BTreeMap::from([(n("com.p.util"), v("2.0.0"))])
        );
        assert_eq!(lock.roots.len(), 2);
        assert!(lock.shared_private.is_empty());
    }

    #[test]
    fn shared_conflict_names_each_requirer_and_range() {
        let c = catalog(&[
            ("com.a.one", "1.0.0", vec![dep("com.x.codec", "^1.2", true)]),
            ("com.b.two", "2.0.0", vec![dep("com.x.codec", "^2.0", true)]),
            ("com.x.codec", "1.2.0", vec![]),
            ("com.x.codec", "2.0.0", vec![]),
        ]);
        let err = resolve(
            &c,
            &[root("com.a.one", "1.0.0"), root("com.b.two", "2.0.0")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "shared dependency com.x.codec: com.a.one@1.0.0 requires ^1.2, com.b.two@2.0.0 requires ^2.0; no version satisfies both"
        );
        // The same two skills with the dependency private: no conflict.
        let c = catalog(&[
            (
                "com.a.one",
                "1.0.0",
                vec![dep("com.x.codec", "^1.2", false)],
            ),
            (
                "com.b.two",
                "2.0.0",
                vec![dep("com.x.codec", "^2.0", false)],
            ),
            ("com.x.codec", "1.2.0", vec![]),
            ("com.x.codec", "2.0.0", vec![]),
        ]);
        let lock = resolve(
            &c,
            &[root("com.a.one", "1.0.0"), root("com.b.two", "2.0.0")],
        )
        .unwrap();
        assert_eq!(lock.private[&n("com.a.one")][&n("com.x.codec")], v("1.2.0"));
        assert_eq!(lock.private[&n("com.b.two")][&n("com.x.codec")], v("2.0.0"));
    }

    #[test]
    fn a_private_dependency_sharing_something_constrains_the_shared_version() {
        let c = catalog(&[
            (
                "com.a.one",
                "1.0.0",
                vec![
                    dep("com.x.codec", "^1", true),
                    dep("com.p.util", "*", false),
                ],
            ),
            ("com.p.util", "1.0.0", vec![dep("com.x.codec", "^2", true)]),
            ("com.x.codec", "1.0.0", vec![]),
            ("com.x.codec", "2.0.0", vec![]),
        ]);
        let err = resolve(&c, &[root("com.a.one", "1.0.0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shared dependency com.x.codec: com.a.one@1.0.0 requires ^1, com.p.util@1.0.0 (private to com.a.one) requires ^2; no version satisfies both"
        );
    }

    #[test]
    fn backtracks_to_an_older_version_that_fits() {
        let c = catalog(&[
            ("com.a.one", "1.0.0", vec![dep("com.x.lib", "*", true)]),
            ("com.b.two", "1.0.0", vec![dep("com.y.lib", "^1", true)]),
            ("com.x.lib", "1.0.0", vec![dep("com.y.lib", "^1", true)]),
            ("com.x.lib", "2.0.0", vec![dep("com.y.lib", "^2", true)]),
            ("com.y.lib", "1.4.0", vec![]),
            ("com.y.lib", "2.0.0", vec![]),
        ]);
        let lock = resolve(
            &c,
            &[root("com.a.one", "1.0.0"), root("com.b.two", "1.0.0")],
        )
        .unwrap();
        assert_eq!(lock.shared[&n("com.x.lib")], v("1.0.0"));
        assert_eq!(lock.shared[&n("com.y.lib")], v("1.4.0"));
    }

    #[test]
    fn private_conflict_within_one_skill_names_the_owner() {
        let c = catalog(&[
            (
                "com.a.one",
                "1.0.0",
                vec![
                    dep("com.p.util", "^1", false),
                    dep("com.q.tool", "*", false),
                ],
            ),
            ("com.q.tool", "1.0.0", vec![dep("com.p.util", "^2", false)]),
            ("com.p.util", "1.0.0", vec![]),
            ("com.p.util", "2.0.0", vec![]),
        ]);
        let err = resolve(&c, &[root("com.a.one", "1.0.0")]).unwrap_err();
        assert!(
            matches!(&err, ResolveError::PrivateConflict { owner, .. } if *owner == n("com.a.one"))
        );
        assert_eq!(
            err.to_string(),
            "dependency com.p.util private to com.a.one: com.a.one@1.0.0 requires ^1, com.q.tool@1.0.0 (private to com.a.one) requires ^2; no version satisfies both"
        );
    }

    #[test]
    fn shared_packages_own_their_private_dependencies() {
        let c = catalog(&[
            (
                "com.a.one",
                "1.0.0",
                vec![dep("com.s.lib", "^1", true), dep("com.p.util", "^1", false)],
            ),
            ("com.s.lib", "1.0.0", vec![dep("com.p.util", "^2", false)]),
            ("com.p.util", "1.0.0", vec![]),
            ("com.p.util", "2.0.0", vec![]),
        ]);
        let lock = resolve(&c, &[root("com.a.one", "1.0.0")]).unwrap();
        assert_eq!(lock.private[&n("com.a.one")][&n("com.p.util")], v("1.0.0"));
        assert_eq!(
            lock.shared_private[&n("com.s.lib")][&n("com.p.util")],
            v("2.0.0")
        );
    }

    #[test]
    fn missing_package_and_no_matching_version_name_the_requirer() {
        let c = catalog(&[
            ("com.a.one", "1.0.0", vec![dep("com.x.gone", "^1", true)]),
            ("com.b.two", "1.0.0", vec![dep("com.x.codec", "^3", false)]),
            ("com.x.codec", "1.0.0", vec![]),
            ("com.x.codec", "2.0.0", vec![]),
        ]);
        assert_eq!(
            resolve(&c, &[root("com.a.one", "1.0.0")])
                .unwrap_err()
                .to_string(),
            "com.a.one@1.0.0 requires com.x.gone ^1, which is not in the catalog"
        );
        assert_eq!(
            resolve(&c, &[root("com.b.two", "1.0.0")])
                .unwrap_err()
                .to_string(),
            "com.b.two@1.0.0 requires com.x.codec ^3, but the catalog has only 1.0.0, 2.0.0"
        );
    }

    #[test]
    fn pre_releases_are_chosen_only_when_asked_for() {
        let c = catalog(&[
            ("com.a.one", "1.0.0", vec![dep("com.x.codec", "^1.0", true)]),
            (
                "com.b.two",
                "1.0.0",
                vec![dep("com.x.codec", "^1.1.0-rc.1", true)],
            ),
            ("com.x.codec", "1.0.0", vec![]),
            ("com.x.codec", "1.1.0-rc.2", vec![]),
        ]);
        let lock = resolve(&c, &[root("com.a.one", "1.0.0")]).unwrap();
        assert_eq!(lock.shared[&n("com.x.codec")], v("1.0.0"));
        let lock = resolve(&c, &[root("com.b.two", "1.0.0")]).unwrap();
        assert_eq!(lock.shared[&n("com.x.codec")], v("1.1.0-rc.2"));
    }

    #[test]
    fn roots_are_checked() {
        let c = catalog(&[
            ("com.a.one", "1.0.0", vec![]),
            ("com.a.one", "2.0.0", vec![]),
        ]);
        assert_eq!(
            resolve(&c, &[root("com.a.one", "3.0.0")]),
            Err(ResolveError::UnknownRoot {
                package: n("com.a.one"),
                version: v("3.0.0")
            })
        );
        assert!(matches!(
            resolve(
                &c,
                &[root("com.a.one", "2.0.0"), root("com.a.one", "1.0.0")]
            ),
            Err(ResolveError::DuplicateRoot { .. })
        ));
        assert_eq!(resolve(&c, &[]).unwrap(), Lock::default());
    }

    #[test]
    fn catalog_refuses_conflicting_entries() {
        let mut c = Catalog::new();
        c.insert(n("com.a.one"), v("1.0.0"), vec![]).unwrap();
        c.insert(n("com.a.one"), v("1.0.0"), vec![]).unwrap();
        assert!(matches!(
            c.insert(n("com.a.one"), v("1.0.0"), vec![dep("com.x.y", "*", true)]),
            Err(CatalogError::Conflict { .. })
        ));
        assert!(matches!(
            c.insert(
                n("com.b.two"),
                v("1.0.0"),
                vec![dep("com.x.y", "*", true), dep("com.x.y", "^1", false)]
            ),
            Err(CatalogError::DuplicateDependency { .. })
        ));
        assert!(matches!(
            c.insert(
                n("com.c.three"),
                v("1.0.0"),
                vec![dep("com.c.three", "*", true)]
            ),
            Err(CatalogError::SelfDependency { .. })
        ));
    }

    #[test]
    fn solver_is_bounded() {
        // A chain longer than the solver may follow.
        let mut c = Catalog::new();
        for i in 0..=MAX_SOLVER_PACKAGES {
            let deps = vec![dep(&format!("com.chain.p{}", i + 1), "*", true)];
            c.insert(n(&format!("com.chain.p{i}")), v("1.0.0"), deps)
                .unwrap();
        }
        c.insert(
            n(&format!("com.chain.p{}", MAX_SOLVER_PACKAGES + 1)),
            v("1.0.0"),
            vec![],
        )
        .unwrap();
        assert!(matches!(
            resolve(&c, &[root("com.chain.p0", "1.0.0")]),
            Err(ResolveError::TooLarge(_))
        ));
    }

    const NAMES: &[&str] = &["com.r.a", "com.r.b", "com.d.x", "com.d.y", "com.d.z"];
    const VERSIONS: &[&str] = &["0.1.0", "1.0.0", "1.2.0", "2.0.0", "2.1.0-rc.1"];
    const RANGES: &[&str] = &[
        "*",
        "^1",
        "^2",
        ">=1.1, <3",
        "~0.1",
        "=1.0.0",
        "^1 || ^2",
        "^2.1.0-rc.1",
    ];

    type Entry = (usize, usize, Vec<(usize, usize, bool)>);

    fn entries() -> impl Strategy<Value = Vec<Entry>> {
        prop::collection::vec(
            (
                0..NAMES.len(),
                0..VERSIONS.len(),
                prop::collection::vec((2..NAMES.len(), 0..RANGES.len(), any::<bool>()), 0..3),
            ),
            1..16,
        )
        .prop_map(|mut entries| {
            // One entry per name@version, and no repeated dependency names.
            let mut seen = BTreeSet::new();
            entries.retain(|(p, ver, _)| seen.insert((*p, *ver)));
            for (p, _, deps) in &mut entries {
                let mut names = BTreeSet::from([*p]);
                deps.retain(|(d, _, _)| names.insert(*d));
            }
            entries
        })
    }

    fn build(entries: &[Entry]) -> Catalog {
        let mut c = Catalog::new();
        for (p, ver, deps) in entries {
            let deps = deps
                .iter()
                .map(|(d, r, s)| dep(NAMES[*d], RANGES[*r], *s))
                .collect();
            c.insert(n(NAMES[*p]), v(VERSIONS[*ver]), deps).unwrap();
        }
        c
    }

    fn roots_of(entries: &[Entry], picks: &[usize]) -> Vec<(PackageName, Version)> {
        let mut roots: BTreeMap<PackageName, Version> = BTreeMap::new();
        for pick in picks {
            let (p, ver, _) = &entries[pick % entries.len()];
            roots
                .entry(n(NAMES[*p]))
                .or_insert_with(|| v(VERSIONS[*ver]));
        }
        roots.into_iter().collect()
    }

    /// Every dependency edge of every chosen package is met by the version
    /// chosen in its scope.
    fn check_lock(c: &Catalog, lock: &Lock) -> Result<(), String> {
        let empty = BTreeMap::new();
        let check = |name: &PackageName,
                     version: &Version,
                     scope: &BTreeMap<PackageName, Version>| {
            let deps = c
                .dependencies(name, version)
                .ok_or(format!("{name}@{version} not in catalog"))?;
            for d in deps {
                let chosen = if d.shared {
                    lock.shared.get(&d.package)
                } else {
                    scope.get(&d.package)
                };
                let chosen = chosen.ok_or(format!("{name}@{version}: {} not chosen", d.package))?;
                if !d.range.contains(chosen) {
                    return Err(format!(
                        "{name}@{version}: {}@{chosen} not in {}",
                        d.package, d.range
                    ));
                }
            }
            Ok::<(), String>(())
        };
        for (r, ver) in &lock.roots {
            let scope = lock.private.get(r).unwrap_or(&empty);
            check(r, ver, scope)?;
            for (p, pv) in scope {
                check(p, pv, scope)?;
            }
        }
        for (s, ver) in &lock.shared {
            let scope = lock.shared_private.get(s).unwrap_or(&empty);
            check(s, ver, scope)?;
            for (p, pv) in scope {
                check(p, pv, scope)?;
            }
        }
        Ok(())
    }

    /// Regression: the shrunk failing input of
    /// `every_chosen_version_satisfies_every_range_on_it` (saved in
    /// `proptest-regressions/resolve.txt`), from before the catalog refused
    /// self-dependencies. Two versions depend on their own package; given to
    /// pubgrub, a self-dependency its own version does not meet
    /// (`com.d.y@1.2.0` on `com.d.y ^2`, in the same private scope) made it
    /// return `com.d.y@1.0.0` private to `com.r.b` without the shared `com.d.x`
    /// that version requires ("com.d.y@1.0.0: com.d.x not chosen"). The
    /// checker was right: the lock was wrong. The catalog now refuses such
    /// entries; the entries are put in directly here, past `insert`, so the
    /// provider's own guard is what is tested.
    #[test]
    fn self_dependent_versions_never_yield_a_lock_missing_a_dependency() {
        let entries: Vec<Entry> = vec![
            (0, 1, vec![]),
            (4, 0, vec![]),
            (3, 1, vec![(2, 0, true)]),
            (3, 2, vec![(3, 2, false)]),
            (3, 3, vec![(2, 7, false)]),
            (1, 0, vec![(3, 6, false)]),
            (0, 2, vec![]),
            (2, 2, vec![(2, 5, true)]),
            (0, 0, vec![]),
            (2, 1, vec![]),
            (0, 3, vec![]),
        ];
        let mut c = Catalog::new();
        for (p, ver, deps) in &entries {
            let deps: Vec<DependencySpec> = deps
                .iter()
                .map(|(d, r, s)| dep(NAMES[*d], RANGES[*r], *s))
                .collect();
            if deps.iter().any(|d| d.package == n(NAMES[*p])) {
                assert!(matches!(
                    c.clone()
                        .insert(n(NAMES[*p]), v(VERSIONS[*ver]), deps.clone()),
                    Err(CatalogError::SelfDependency { .. })
                ));
            }
            c.packages
                .entry(n(NAMES[*p]))
                .or_default()
                .insert(v(VERSIONS[*ver]), deps);
        }
        let roots = roots_of(&entries, &[7179083733816056276]);
        assert_eq!(roots, vec![root("com.r.b", "0.1.0")]);
        let lock = resolve(&c, &roots).unwrap();
        check_lock(&c, &lock).unwrap();
        // com.d.y@2.0.0 needs a com.d.x the catalog lacks and @1.2.0 depends
        // on itself, so com.d.y@1.0.0 it is, with the shared com.d.x it
        // requires: @1.0.0, as com.d.x@1.2.0 depends on itself too.
        assert_eq!(
            lock,
            Lock {
                roots: BTreeMap::from([root("com.r.b", "0.1.0")]),
                shared: BTreeMap::from([(n("com.d.x"), v("1.0.0"))]),
                private: BTreeMap::from([(
                    n("com.r.b"),
                    BTreeMap::from([(n("com.d.y"), v("1.0.0"))])
                )]),
                shared_private: BTreeMap::new(),
            }
        );
        // The same input as the property now generates it (self-dependencies
        // dropped, every entry through `insert`): a lock that checks out.
        let mut entries = entries;
        for (p, _, deps) in &mut entries {
            deps.retain(|(d, _, _)| d != p);
        }
        let c = build(&entries);
        let lock = resolve(&c, &roots).unwrap();
        check_lock(&c, &lock).unwrap();
        // com.d.y@1.2.0 now depends on nothing, so it beats @1.0.0.
        assert_eq!(
            lock,
            Lock {
                roots: BTreeMap::from([root("com.r.b", "0.1.0")]),
                shared: BTreeMap::new(),
                private: BTreeMap::from([(
                    n("com.r.b"),
                    BTreeMap::from([(n("com.d.y"), v("1.2.0"))])
                )]),
                shared_private: BTreeMap::new(),
            }
        );
    }

    proptest! {
        #[test]
        fn insertion_order_does_not_change_the_result(
            (entries, shuffled) in entries().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
            picks in prop::collection::vec(any::<usize>(), 1..3),
        ) {
            let roots = roots_of(&entries, &picks);
            let mut reversed_roots = roots.clone();
            reversed_roots.reverse();
            let a = resolve(&build(&entries), &roots);
            let b = resolve(&build(&shuffled), &reversed_roots);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn every_chosen_version_satisfies_every_range_on_it(
            entries in entries(),
            picks in prop::collection::vec(any::<usize>(), 1..3),
        ) {
            let c = build(&entries);
            let roots = roots_of(&entries, &picks);
            if let Ok(lock) = resolve(&c, &roots) {
                for (r, ver) in &roots {
                    prop_assert_eq!(lock.roots.get(r), Some(ver));
                }
                if let Err(e) = check_lock(&c, &lock) {
                    prop_assert!(false, "{}", e);
                }
            }
        }
    }
}
