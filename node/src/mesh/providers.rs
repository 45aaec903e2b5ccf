//! The DHT's record store: bounded provider records for blob keys.
//!
//! The mesh's Kademlia runs with `StoreInserts::FilterBoth`, so kad never
//! stores what a peer sends on its own: an inbound `ADD_PROVIDER` surfaces
//! as `InboundRequest::AddProvider { record: Some(..) }` and the swarm task
//! hands it to `ProviderStore::insert_remote`, which decides (sans I/O, the
//! time is passed in) whether to keep it. Value records are never stored.
//!
//! What a hostile peer can do, and the bound on it:
//! - claim another peer provides a key: kad drops an `ADD_PROVIDER` whose
//!   provider is not the sending peer before it reaches us (libp2p-kad's
//!   handler event check); `insert_remote` also refuses records naming us;
//! - send keys that are not blob keys (any length up to kad's packet size):
//!   refused unless 32 bytes (a sha256);
//! - flood one key: at most `MAX_PROVIDERS_PER_KEY` providers per key, first
//!   come, refreshes in place; a full key refuses newcomers rather than
//!   evicting (evicting by XOR distance would let minted ids push honest
//!   providers out);
//! - flood many keys from one identity: at most `MAX_KEYS_PER_PROVIDER`
//!   records per provider;
//! - flood with many identities: at most `MAX_PROVIDER_RECORDS` records in
//!   all; expired records are swept before a refusal, so a flood stops
//!   costing room one TTL after it stops;
//! - announce many or bogus addresses: at most `MAX_ADDRS_PER_RECORD` are
//!   kept; a dial to an address that is not the provider's fails the noise
//!   handshake, and fetchers verify every chunk anyway.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::kad::store::{self, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

use super::config::MAX_ADDRS_PER_PEER;

/// Length of a blob key: the blob's sha256.
pub const BLOB_KEY_LEN: usize = 32;
/// Providers kept per blob key (Kademlia's replication factor k).
pub const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Provider records kept for one remote provider, over all keys.
pub const MAX_KEYS_PER_PROVIDER: usize = 4096;
/// Provider records kept for remote providers, over all keys and providers.
pub const MAX_PROVIDER_RECORDS: usize = 16_384;
/// Blobs this node provides itself (its own records, re-published by kad).
pub const MAX_PROVIDED_BLOBS: usize = 65_536;
/// Addresses kept per provider record.
pub const MAX_ADDRS_PER_RECORD: usize = MAX_ADDRS_PER_PEER;

/// Why a provider record from a peer was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderRefusal {
    /// The key is not a sha256 (32 bytes).
    #[error("key of {len} bytes is not a blob key")]
    NotABlobKey {
        /// The key's length.
        len: usize,
    },
    /// The record names this node as the provider.
    #[error("record names this node as provider")]
    OwnId,
    /// The record has already expired.
    #[error("record already expired")]
    Expired,
    /// The key has `MAX_PROVIDERS_PER_KEY` other providers.
    #[error("key already has {MAX_PROVIDERS_PER_KEY} providers")]
    KeyFull,
    /// The provider has `MAX_KEYS_PER_PROVIDER` records already.
    #[error("provider already has {MAX_KEYS_PER_PROVIDER} records")]
    ProviderFull,
    /// The store holds `MAX_PROVIDER_RECORDS` records.
    #[error("store holds {MAX_PROVIDER_RECORDS} provider records")]
    StoreFull,
}

impl ProviderRefusal {
    /// The `reason` label of the refusal counter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotABlobKey { .. } => "not_a_blob_key",
            Self::OwnId => "own_id",
            Self::Expired => "expired",
            Self::KeyFull => "key_full",
            Self::ProviderFull => "provider_full",
            Self::StoreFull => "store_full",
        }
    }
}

/// What `insert_remote` did with an accepted record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new (key, provider) pair.
    New,
    /// The same provider announced the key again: expiry and addresses renewed.
    Refreshed,
}

/// Kad's record store for the mesh: this node's own provider records and
/// bounded remote ones; no value records.
#[derive(Debug)]
pub struct ProviderStore {
    local: PeerId,
    max_per_key: usize,
    max_per_provider: usize,
    max_records: usize,
    max_provided: usize,
    /// Our own records, by key.
    provided: HashMap<RecordKey, ProviderRecord>,
    /// Remote providers' records, by key.
    remote: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// Remote records per provider.
    per_provider: HashMap<PeerId, usize>,
    /// Remote records in all.
    total: usize,
}

impl ProviderStore {
    /// An empty store for node `local` with the module's bounds.
    pub fn new(local: PeerId) -> Self {
        Self::with_bounds(
            local,
            MAX_PROVIDERS_PER_KEY,
            MAX_KEYS_PER_PROVIDER,
            MAX_PROVIDER_RECORDS,
            MAX_PROVIDED_BLOBS,
        )
    }

    /// An empty store with explicit bounds (tests use small ones).
    pub fn with_bounds(
        local: PeerId,
        max_per_key: usize,
        max_per_provider: usize,
        max_records: usize,
        max_provided: usize,
    ) -> Self {
        Self {
            local,
            max_per_key,
            max_per_provider,
            max_records,
            max_provided,
            provided: HashMap::new(),
            remote: HashMap::new(),
            per_provider: HashMap::new(),
            total: 0,
        }
    }

    /// Remote provider records held.
    pub fn remote_records(&self) -> usize {
        self.total
    }

    /// Keys this node provides itself.
    pub fn provided_keys(&self) -> usize {
        self.provided.len()
    }

    /// The keys this node provides itself.
    pub fn provided_keys_iter(&self) -> impl Iterator<Item = &RecordKey> {
        self.provided.keys()
    }

    /// Whether this node provides `key`.
    pub fn provides(&self, key: &RecordKey) -> bool {
        self.provided.contains_key(key)
    }

    /// Validates and stores a record a peer announced (the provider is the
    /// sender: kad checked that). Expired records are swept first when a
    /// bound would refuse it.
    pub fn insert_remote(
        &mut self,
        mut record: ProviderRecord,
        now: Instant,
    ) -> Result<Stored, ProviderRefusal> {
        let len = record.key.as_ref().len();
        if len != BLOB_KEY_LEN {
            return Err(ProviderRefusal::NotABlobKey { len });
        }
        if record.provider == self.local {
            return Err(ProviderRefusal::OwnId);
        }
        if record.is_expired(now) {
            return Err(ProviderRefusal::Expired);
        }
        record.addresses.truncate(MAX_ADDRS_PER_RECORD);
        if let Some(existing) = self
            .remote
            .get_mut(&record.key)
            .and_then(|ps| ps.iter_mut().find(|p| p.provider == record.provider))
        {
            *existing = record;
            return Ok(Stored::Refreshed);
        }
        if self.refusal(&record).is_some() {
            self.sweep(now);
        }
        if let Some(refusal) = self.refusal(&record) {
            return Err(refusal);
        }
        *self.per_provider.entry(record.provider).or_default() += 1;
        self.total += 1;
        self.remote
            .entry(record.key.clone())
            .or_default()
            .push(record);
        Ok(Stored::New)
    }

    /// The bound a new (key, provider) pair would break, if any.
    fn refusal(&self, record: &ProviderRecord) -> Option<ProviderRefusal> {
        if self
            .remote
            .get(&record.key)
            .is_some_and(|ps| ps.len() >= self.max_per_key)
        {
            Some(ProviderRefusal::KeyFull)
        } else if self
            .per_provider
            .get(&record.provider)
            .is_some_and(|n| *n >= self.max_per_provider)
        {
            Some(ProviderRefusal::ProviderFull)
        } else if self.total >= self.max_records {
            Some(ProviderRefusal::StoreFull)
        } else {
            None
        }
    }

    /// Drops every expired remote record; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = Vec::new();
        self.remote.retain(|_, providers| {
            providers.retain(|p| {
                let keep = !p.is_expired(now);
                if !keep {
                    dropped.push(p.provider);
                }
                keep
            });
            !providers.is_empty()
        });
        for provider in &dropped {
            self.forget_one(provider);
        }
        dropped.len()
    }

    fn forget_one(&mut self, provider: &PeerId) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_provider.get_mut(provider) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_provider.remove(provider);
            }
        }
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::iter::Map<
        std::collections::hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, _: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    /// Value records are not part of the mesh's DHT.
    fn put(&mut self, _: Record) -> store::Result<()> {
        Err(store::Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    /// Kad calls this for our own records (`start_providing`); with
    /// `FilterBoth` remote records come through `insert_remote` instead,
    /// and are bounded the same way if kad ever hands one here.
    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        if record.provider == self.local {
            if !self.provided.contains_key(&record.key) && self.provided.len() >= self.max_provided
            {
                return Err(store::Error::MaxProvidedKeys);
            }
            self.provided.insert(record.key.clone(), record);
            return Ok(());
        }
        self.insert_remote(record, Instant::now())
            .map(|_| ())
            .map_err(|_| store::Error::MaxProvidedKeys)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.provided
            .get(key)
            .into_iter()
            .chain(self.remote.get(key).into_iter().flatten())
            .cloned()
            .collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.provided.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.local {
            self.provided.remove(key);
            return;
        }
        let Some(providers) = self.remote.get_mut(key) else {
            return;
        };
        let before = providers.len();
        providers.retain(|p| p.provider != *provider);
        let removed = before != providers.len();
        if providers.is_empty() {
            self.remote.remove(key);
        }
        if removed {
            self.forget_one(provider);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::Multiaddr;

    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn key(n: u8) -> RecordKey {
        RecordKey::new(&[n; BLOB_KEY_LEN])
    }

    fn record(key: RecordKey, provider: PeerId, now: Instant) -> ProviderRecord {
        ProviderRecord {
            key,
            provider,
            expires: Some(now + TTL),
            addresses: Vec::new(),
        }
    }

    fn small(local: PeerId) -> ProviderStore {
        ProviderStore::with_bounds(local, 2, 3, 4, 2)
    }

    #[test]
    fn a_blob_key_from_a_peer_is_stored_and_listed() {
        let now = Instant::now();
        let mut store = small(PeerId::random());
        let peer = PeerId::random();
        assert_eq!(
            store.insert_remote(record(key(1), peer, now), now),
            Ok(Stored::New)
        );
        let listed: Vec<PeerId> = store
            .providers(&key(1))
            .iter()
            .map(|r| r.provider)
            .collect();
        assert_eq!(listed, vec![peer]);
        assert_eq!(store.remote_records(), 1);
        assert!(store.providers(&key(2)).is_empty());
    }

    #[test]
    fn keys_that_are_not_sha256_are_refused() {
        let now = Instant::now();
        let mut store = small(PeerId::random());
        for len in [0, 31, 33, 4096] {
            let r = record(RecordKey::new(&vec![7u8; len]), PeerId::random(), now);
            assert_eq!(
                store.insert_remote(r, now),
                Err(ProviderRefusal::NotABlobKey { len })
            );
        }
        assert_eq!(store.remote_records(), 0);
    }

    #[test]
    fn a_record_naming_us_or_already_expired_is_refused() {
        let now = Instant::now();
        let local = PeerId::random();
        let mut store = small(local);
        assert_eq!(
            store.insert_remote(record(key(1), local, now), now),
            Err(ProviderRefusal::OwnId)
        );
        let mut old = record(key(1), PeerId::random(), now);
        old.expires = Some(now);
        assert_eq!(store.insert_remote(old, now), Err(ProviderRefusal::Expired));
        assert_eq!(store.remote_records(), 0);
    }

    #[test]
    fn a_full_key_refuses_newcomers_but_refreshes_its_providers() {
        let now = Instant::now();
        let mut store = small(PeerId::random());
        let (a, b) = (PeerId::random(), PeerId::random());
        store.insert_remote(record(key(1), a, now), now).unwrap();
        store.insert_remote(record(key(1), b, now), now).unwrap();
        assert_eq!(
            store.insert_remote(record(key(1), PeerId::random(), now), now),
            Err(ProviderRefusal::KeyFull)
        );
        let later = now + TTL / 2;
        let mut renewed = record(key(1), a, later);
        renewed.addresses = vec!["/ip4/10.0.0.1/tcp/1".parse().unwrap()];
        assert_eq!(store.insert_remote(renewed, later), Ok(Stored::Refreshed));
        let held = store.providers(&key(1));
        assert_eq!(held.len(), 2);
        let a_record = held.iter().find(|r| r.provider == a).unwrap();
        assert_eq!(a_record.expires, Some(later + TTL));
        assert_eq!(a_record.addresses.len(), 1);
    }

    #[test]
    fn one_provider_cannot_take_more_than_its_share() {
        let now = Instant::now();
        let mut store = small(PeerId::random());
        let flood = PeerId::random();
        for n in 0..3 {
            store
                .insert_remote(record(key(n), flood, now), now)
                .unwrap();
        }
        assert_eq!(
            store.insert_remote(record(key(3), flood, now), now),
            Err(ProviderRefusal::ProviderFull)
        );
        // Another provider still gets in.
        assert_eq!(
            store.insert_remote(record(key(3), PeerId::random(), now), now),
            Ok(Stored::New)
        );
    }

    #[test]
    fn the_total_is_bounded_and_expired_records_make_room() {
        let now = Instant::now();
        let mut store = small(PeerId::random());
        for n in 0..4 {
            store
                .insert_remote(record(key(n), PeerId::random(), now), now)
                .unwrap();
        }
        assert_eq!(
            store.insert_remote(record(key(9), PeerId::random(), now), now),
            Err(ProviderRefusal::StoreFull)
        );
        assert_eq!(store.remote_records(), 4);
        // One TTL later the flood has expired: the sweep frees the room.
        let later = now + TTL;
        assert_eq!(
            store.insert_remote(record(key(9), PeerId::random(), later), later),
            Ok(Stored::New)
        );
        assert_eq!(store.remote_records(), 1);
        assert!(store.providers(&key(0)).is_empty());
    }

    #[test]
    fn addresses_are_capped() {
        let now = Instant::now();
        let mut store = small(PeerId::random());
        let mut r = record(key(1), PeerId::random(), now);
        r.addresses = (0..50u16)
            .map(|port| {
                format!("/ip4/10.0.0.1/tcp/{port}")
                    .parse::<Multiaddr>()
                    .unwrap()
            })
            .collect();
        store.insert_remote(r, now).unwrap();
        assert_eq!(
            store.providers(&key(1))[0].addresses.len(),
            MAX_ADDRS_PER_RECORD
        );
    }

    #[test]
    fn removal_keeps_the_counts_right() {
        let now = Instant::now();
        let mut store = small(PeerId::random());
        let p = PeerId::random();
        for n in 0..3 {
            store.insert_remote(record(key(n), p, now), now).unwrap();
        }
        store.remove_provider(&key(0), &p);
        store.remove_provider(&key(0), &p);
        store.remove_provider(&key(5), &p);
        assert_eq!(store.remote_records(), 2);
        // The provider's share has room again.
        assert_eq!(
            store.insert_remote(record(key(4), p, now), now),
            Ok(Stored::New)
        );
    }

    #[test]
    fn own_records_are_bounded_listed_and_never_count_as_remote() {
        let now = Instant::now();
        let local = PeerId::random();
        let mut store = small(local);
        store.add_provider(record(key(1), local, now)).unwrap();
        store.add_provider(record(key(2), local, now)).unwrap();
        // Re-providing a key already provided is not a new key.
        store.add_provider(record(key(2), local, now)).unwrap();
        assert!(matches!(
            store.add_provider(record(key(3), local, now)),
            Err(store::Error::MaxProvidedKeys)
        ));
        assert_eq!(store.provided().count(), 2);
        assert_eq!(store.remote_records(), 0);
        assert!(store.provides(&key(1)));
        assert_eq!(store.providers(&key(1))[0].provider, local);
        store.remove_provider(&key(1), &local);
        assert!(!store.provides(&key(1)));
        assert!(store.put(Record::new(key(1), vec![1])).is_err());
        assert!(store.get(&key(1)).is_none());
    }
}
