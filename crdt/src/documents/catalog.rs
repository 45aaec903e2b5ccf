//! The catalog document: package → version → signed manifest.
//!
//! Key `<package>@<version>`, value the encoded `SignedEnvelope` of the
//! manifest. Anyone can write any key, so two different envelopes may
//! conflict on one key: the reader looks at every conflicting value, keeps
//! the valid ones and, should two valid ones differ, the one with the
//! smallest payload digest, so a forged value can never hide a valid one.

use std::collections::BTreeMap;

use prost::Message as _;
use semver::Version;

use super::{
    MeshDocument, RejectedEntry, VerifyCache, WriteError, best_value, read_entries, verified_entry,
};
use crate::manifest::{PackageName, SignedManifest};
use crate::signing::digest;
use crate::trust::TrustRoot;

/// Valid manifests by package and version.
pub type ManifestCatalog = BTreeMap<PackageName, BTreeMap<Version, SignedManifest>>;

/// The catalog key of `package` at `version`.
pub fn catalog_key(package: &PackageName, version: &Version) -> String {
    format!("{package}@{version}")
}

/// Writes a signed manifest into the catalog document.
pub fn write_manifest(doc: &mut MeshDocument, manifest: &SignedManifest) -> Result<(), WriteError> {
    let key = catalog_key(&manifest.manifest.name, &manifest.manifest.version);
    doc.put_bytes(&key, manifest.envelope.encode_to_vec())
}

/// Reads and validates the catalog document.
pub fn read_catalog(
    doc: &MeshDocument,
    trust: &TrustRoot,
    max_entries: usize,
    cache: &mut VerifyCache<SignedManifest>,
    catalog: &mut ManifestCatalog,
    rejected: &mut Vec<RejectedEntry>,
) {
    read_entries(doc, max_entries, rejected, |key, values| {
        let manifest = parse_catalog_entry(key, values, trust, cache)?;
        catalog
            .entry(manifest.manifest.name.clone())
            .or_default()
            .insert(manifest.manifest.version.clone(), manifest);
        Ok(())
    });
    cache.finish_read();
}

fn parse_catalog_entry(
    key: &str,
    values: &[Option<Vec<u8>>],
    trust: &TrustRoot,
    cache: &mut VerifyCache<SignedManifest>,
) -> Result<SignedManifest, String> {
    let check = |bytes: &[u8]| {
        verified_entry(
            cache,
            bytes,
            key,
            |envelope| SignedManifest::verify(envelope, trust),
            |m| catalog_key(&m.manifest.name, &m.manifest.version),
        )
    };
    best_value(values, check, |_, manifest| {
        digest(&manifest.envelope.payload)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::{DocumentId, DocumentLimits};
    use crate::manifest::Manifest;
    use crate::proto::v1::{SemVer, SkillPackage};
    use crate::signing::PublisherKey;
    use crate::trust::TrustedPublisher;

    fn key(n: u8) -> PublisherKey {
        PublisherKey::from_secret_bytes(&[n; 32])
    }

    fn trust() -> TrustRoot {
        TrustRoot::new(1, [TrustedPublisher::new("p", key(1).verifying_key())]).unwrap()
    }

    fn manifest(version: u64, signer: u8) -> SignedManifest {
        let proto = SkillPackage {
            package_name: "com.example.app".to_string(),
            version: Some(SemVer {
                major: version,
                ..SemVer::default()
            }),
            sha256: vec![1; 32],
            size: 1,
            chunk_size: 64 * 1024,
            chunk_sha256: vec![vec![1; 32]],
            abi_world: "clawmesh:skill/skill@0.1.0".to_string(),
            state_schema: 1,
            ..SkillPackage::default()
        };
        SignedManifest::sign(Manifest::from_proto(proto).unwrap(), &[&key(signer)]).unwrap()
    }

    fn read(doc: &MeshDocument, max_entries: usize) -> (ManifestCatalog, Vec<RejectedEntry>) {
        let mut catalog = ManifestCatalog::new();
        let mut rejected = Vec::new();
        let mut cache = VerifyCache::default();
        read_catalog(
            doc,
            &trust(),
            max_entries,
            &mut cache,
            &mut catalog,
            &mut rejected,
        );
        (catalog, rejected)
    }

    #[test]
    fn a_forged_value_on_the_same_key_never_hides_the_valid_one() {
        let limits = DocumentLimits::default();
        let mut honest = MeshDocument::new(DocumentId::Catalog, &[1; 16], limits.clone());
        let mut forger = MeshDocument::new(DocumentId::Catalog, &[2; 16], limits);
        write_manifest(&mut honest, &manifest(1, 1)).unwrap();
        write_manifest(&mut forger, &manifest(1, 9)).unwrap();
        let mut saved = honest.save();
        saved.extend(forger.save());
        let merged = MeshDocument::load(
            DocumentId::Catalog,
            &[3; 16],
            DocumentLimits::default(),
            &saved,
        )
        .unwrap();
        assert_eq!(
            merged.entries()[0].1.len(),
            2,
            "both values conflict on one key"
        );
        let (catalog, rejected) = read(&merged, 10);
        assert!(rejected.is_empty());
        let package: PackageName = "com.example.app".parse().unwrap();
        assert_eq!(catalog[&package].len(), 1);
    }

    #[test]
    fn wrong_key_untrusted_signer_and_garbage_are_rejected() {
        let mut doc = MeshDocument::new(DocumentId::Catalog, &[1; 16], DocumentLimits::default());
        doc.put_bytes("com.example.app@9.9.9", manifest(1, 1).envelope_bytes())
            .unwrap();
        write_manifest(&mut doc, &manifest(2, 9)).unwrap();
        doc.put_bytes("junk", vec![0xff, 0x01]).unwrap();
        let (catalog, rejected) = read(&doc, 10);
        assert!(catalog.is_empty());
        let paths: Vec<&str> = rejected.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "catalog/com.example.app@2.0.0",
                "catalog/com.example.app@9.9.9",
                "catalog/junk"
            ]
        );
        assert!(
            rejected[0].reason.contains("not in the trust root"),
            "{rejected:?}"
        );
        assert!(rejected[1].reason.contains("another key"));
    }

    #[test]
    fn entries_past_the_limit_are_rejected_in_key_order() {
        let mut doc = MeshDocument::new(DocumentId::Catalog, &[1; 16], DocumentLimits::default());
        write_manifest(&mut doc, &manifest(1, 1)).unwrap();
        write_manifest(&mut doc, &manifest(2, 1)).unwrap();
        let (catalog, rejected) = read(&doc, 1);
        assert_eq!(catalog.values().map(|v| v.len()).sum::<usize>(), 1);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].path, "catalog/com.example.app@2.0.0");
    }
}
