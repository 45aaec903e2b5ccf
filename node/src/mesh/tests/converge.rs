use std::time::Duration;

use clawmesh_crdt::manifest::{Manifest, PackageName, SignedManifest};
use clawmesh_crdt::proto::v1::{SemVer, SkillPackage};
use clawmesh_crdt::{PeerConfig, PeerInput, PublisherKey, TrustRoot, TrustedPublisher};
use tokio::sync::mpsc;

use super::support::{WAIT, start_mesh};
use crate::mesh::{DocStore, DriverConfig, DriverHandle, DriverNotice, spawn_driver};

fn publisher() -> PublisherKey {
    PublisherKey::from_secret_bytes(&[1; 32])
}

fn trust() -> TrustRoot {
    TrustRoot::new(
        1,
        [TrustedPublisher::new(
            "release",
            publisher().verifying_key(),
        )],
    )
    .unwrap()
}

fn package() -> PackageName {
    "com.example.counter".parse().unwrap()
}

fn signed_manifest() -> SignedManifest {
    let proto = SkillPackage {
        package_name: package().to_string(),
        version: Some(SemVer {
            major: 1,
            minor: 2,
            patch: 3,
            pre: String::new(),
            build: String::new(),
        }),
        dependencies: vec![],
        sha256: vec![7; 32],
        size: 10,
        chunk_size: 64 * 1024,
        chunk_sha256: vec![vec![7; 32]],
        abi_world: "clawmesh:skill/skill@0.1.0".to_string(),
        state_schema: 1,
        capabilities: None,
        description: String::new(),
    };
    SignedManifest::sign(Manifest::from_proto(proto).unwrap(), &[&publisher()]).unwrap()
}

fn driver_config(seed: u64) -> DriverConfig {
    DriverConfig {
        peer: PeerConfig::default(),
        trust: trust(),
        tick: Duration::from_millis(200),
        seed,
    }
}

async fn has_package(driver: &DriverHandle) -> bool {
    driver
        .inspect(|core| {
            core.catalog()
                .get(&package())
                .is_some_and(|v| !v.is_empty())
        })
        .await
        .unwrap()
}

/// Waits, notice by notice, until the driver's catalog holds the package.
async fn wait_for_package(driver: &DriverHandle, notices: &mut mpsc::Receiver<DriverNotice>) {
    tokio::time::timeout(WAIT, async {
        while !has_package(driver).await {
            notices.recv().await.expect("driver stopped");
        }
    })
    .await
    .expect("timed out waiting for the catalog to converge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_drivers_converge_on_a_published_manifest_and_persist_it() {
    let nodes = start_mesh(3).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut drivers = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        let store = DocStore::open(dirs[i].path().join("docs")).unwrap();
        let (handle, notices) = spawn_driver(
            driver_config(i as u64),
            node.handle.clone(),
            node.events,
            store,
        )
        .unwrap();
        drivers.push((node.handle, handle, notices));
    }

    drivers[0]
        .1
        .submit(PeerInput::PublishManifest(signed_manifest()))
        .await
        .unwrap();
    for (_, driver, notices) in &mut drivers {
        wait_for_package(driver, notices).await;
    }

    // What node 2 persisted loads back into a fresh core.
    let (mesh, _, _) = &drivers[2];
    mesh.shutdown().await;
    let store = DocStore::open(dirs[2].path().join("docs")).unwrap();
    let mut core = clawmesh_crdt::PeerCore::<libp2p::PeerId>::new(
        PeerConfig::default(),
        "reloaded".to_string(),
        trust(),
        99,
    );
    for (doc, bytes) in store.load_all().unwrap() {
        core.load_document(doc, &bytes).unwrap();
    }
    assert!(
        core.catalog()
            .get(&package())
            .is_some_and(|v| !v.is_empty())
    );
    for (mesh, _, _) in &drivers {
        mesh.shutdown().await;
    }
}
