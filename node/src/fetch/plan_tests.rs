use super::*;
use proptest::prelude::*;

const CHUNK: u32 = 16;

fn blob(chunks: usize) -> Vec<u8> {
    (0..chunks * CHUNK as usize - 3)
        .map(|i| (i * 31 % 251) as u8)
        .collect()
}

fn chunk_of(bytes: &[u8], c: u32) -> Vec<u8> {
    let start = c as usize * CHUNK as usize;
    bytes[start..(start + CHUNK as usize).min(bytes.len())].to_vec()
}

fn config() -> PlanConfig {
    PlanConfig {
        max_chunks_per_request: 2,
        max_requests_per_peer: 2,
        max_inflight_bytes: 6 * u64::from(CHUNK),
        steal_after: Duration::from_secs(1),
        max_peer_failures: 2,
        max_copies: 2,
        max_peers: 8,
    }
}

#[test]
fn work_spreads_over_peers_within_bounds() {
    let bytes = blob(20);
    let mut plan = FetchPlan::new(
        ChunkLayout::of_bytes(&bytes, CHUNK),
        &[],
        ['a', 'b', 'c'],
        config(),
    );
    let reqs = plan.next_requests(Instant::now());
    let total: usize = reqs.iter().map(|r| r.chunks.len()).sum();
    assert_eq!(
        total, 6,
        "in-flight bytes bound caps the chunks asked for: {reqs:?}"
    );
    let peers: BTreeSet<char> = reqs.iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 3);
    assert!(plan.inflight_bytes() <= config().max_inflight_bytes);
}

#[test]
fn resume_asks_only_for_missing_chunks() {
    let bytes = blob(4);
    let held = [true, false, true, false];
    let mut plan = FetchPlan::new(ChunkLayout::of_bytes(&bytes, CHUNK), &held, ['a'], config());
    let reqs = plan.next_requests(Instant::now());
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].chunks, vec![1, 3]);
}

#[test]
fn liar_is_banned_and_its_chunks_go_elsewhere() {
    let bytes = blob(2);
    let mut cfg = config();
    cfg.max_requests_per_peer = 1;
    cfg.max_chunks_per_request = 1;
    let mut plan = FetchPlan::new(ChunkLayout::of_bytes(&bytes, CHUNK), &[], ['a', 'b'], cfg);
    let now = Instant::now();
    let reqs = plan.next_requests(now);
    let liar = reqs.iter().find(|r| r.peer == 'a').unwrap().clone();
    let c = liar.chunks[0];
    let mut wrong = chunk_of(&bytes, c);
    wrong[0] ^= 1;
    assert_eq!(
        plan.on_chunk(liar.id, c, &wrong),
        ChunkVerdict::Lied { peer: 'a' }
    );
    assert_eq!(plan.liars(), vec![('a', c)]);
    // The honest peer finishes its own request, then gets the liar's chunk.
    let honest = reqs.iter().find(|r| r.peer == 'b').unwrap().clone();
    let h = honest.chunks[0];
    assert_eq!(
        plan.on_chunk(honest.id, h, &chunk_of(&bytes, h)),
        ChunkVerdict::Accept
    );
    plan.on_request_end(honest.id, RequestEnd::Finished);
    let again = plan.next_requests(now);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].peer, again[0].chunks.clone()), ('b', vec![c]));
    assert_eq!(
        plan.on_chunk(again[0].id, c, &chunk_of(&bytes, c)),
        ChunkVerdict::Accept
    );
    assert_eq!(plan.status(), PlanStatus::Done);
    assert_eq!(plan.peers_used(), vec![('b', 2)]);
}

#[test]
fn oversized_chunk_is_a_lie() {
    let bytes = blob(1);
    let mut plan = FetchPlan::new(ChunkLayout::of_bytes(&bytes, CHUNK), &[], ['a'], config());
    let req = plan.next_requests(Instant::now()).remove(0);
    let mut long = chunk_of(&bytes, 0);
    long.push(0);
    assert_eq!(
        plan.on_chunk(req.id, 0, &long),
        ChunkVerdict::Lied { peer: 'a' }
    );
    assert_eq!(plan.status(), PlanStatus::NoProviders { missing: vec![0] });
}

#[test]
fn vanished_peer_is_requeued_and_no_providers_is_reported() {
    let bytes = blob(3);
    let mut plan = FetchPlan::new(
        ChunkLayout::of_bytes(&bytes, CHUNK),
        &[],
        ['a', 'b'],
        config(),
    );
    let reqs = plan.next_requests(Instant::now());
    assert!(reqs.iter().any(|r| r.peer == 'a') && reqs.iter().any(|r| r.peer == 'b'));
    plan.on_peer_gone(&'a');
    assert_eq!(plan.standing(&'a'), Some(PeerStanding::Gone));
    let more = plan.next_requests(Instant::now());
    assert!(more.iter().all(|r| r.peer == 'b'));
    plan.on_peer_gone(&'b');
    assert_eq!(
        plan.status(),
        PlanStatus::NoProviders {
            missing: vec![0, 1, 2]
        }
    );
}

#[test]
fn not_held_chunks_are_asked_of_others() {
    let bytes = blob(1);
    let mut plan = FetchPlan::new(ChunkLayout::of_bytes(&bytes, CHUNK), &[], ['a'], config());
    let req = plan.next_requests(Instant::now()).remove(0);
    plan.on_not_held(req.id, 0);
    plan.on_request_end(req.id, RequestEnd::Finished);
    assert_eq!(plan.status(), PlanStatus::NoProviders { missing: vec![0] });
    plan.add_peer('b');
    let req = plan.next_requests(Instant::now()).remove(0);
    assert_eq!(req.peer, 'b');
}

#[test]
fn slow_request_is_stolen_after_the_timeout() {
    let bytes = blob(1);
    let mut plan = FetchPlan::new(
        ChunkLayout::of_bytes(&bytes, CHUNK),
        &[],
        ['a', 'b'],
        config(),
    );
    let t0 = Instant::now();
    let first = plan.next_requests(t0).remove(0);
    assert!(
        plan.next_requests(t0 + Duration::from_millis(999))
            .is_empty()
    );
    let stolen = plan.next_requests(t0 + Duration::from_secs(1));
    assert_eq!(stolen.len(), 1);
    assert_ne!(stolen[0].peer, first.peer);
    assert_eq!(
        plan.on_chunk(stolen[0].id, 0, &chunk_of(&bytes, 0)),
        ChunkVerdict::Accept
    );
    // The slow copy arrives later and is dropped.
    assert_eq!(
        plan.on_chunk(first.id, 0, &chunk_of(&bytes, 0)),
        ChunkVerdict::Duplicate
    );
    assert_eq!(plan.status(), PlanStatus::Done);
    // Nothing is stolen twice.
    assert!(plan.next_requests(t0 + Duration::from_secs(9)).is_empty());
}

#[test]
fn repeated_failures_drop_the_peer() {
    let bytes = blob(1);
    let mut plan = FetchPlan::new(ChunkLayout::of_bytes(&bytes, CHUNK), &[], ['a'], config());
    for _ in 0..2 {
        let req = plan.next_requests(Instant::now()).remove(0);
        plan.on_request_end(req.id, RequestEnd::Failed);
    }
    assert_eq!(plan.standing(&'a'), Some(PeerStanding::Gone));
    assert!(matches!(plan.status(), PlanStatus::NoProviders { .. }));
}

#[test]
fn a_peer_found_later_joins_and_a_refreshed_one_is_asked_again() {
    let bytes = blob(2);
    let mut plan = FetchPlan::new(ChunkLayout::of_bytes(&bytes, CHUNK), &[], ['a'], config());
    let req = plan.next_requests(Instant::now()).remove(0);
    // 'a' lies: the fetch is short of peers.
    assert!(matches!(
        plan.on_chunk(req.id, 0, &[0; CHUNK as usize]),
        ChunkVerdict::Lied { .. }
    ));
    assert!(plan.short_of_peers());
    assert_eq!(plan.rediscover('a'), Rediscovered::Unchanged);
    assert!(plan.next_requests(Instant::now()).is_empty());
    // 'b' lacks the blob at first, then fetches it and is named again.
    assert_eq!(plan.rediscover('b'), Rediscovered::Joined);
    assert!(!plan.short_of_peers());
    let req = plan.next_requests(Instant::now()).remove(0);
    assert_eq!((req.peer, req.chunks.clone()), ('b', vec![0, 1]));
    plan.on_not_held(req.id, 0);
    plan.on_not_held(req.id, 1);
    plan.on_request_end(req.id, RequestEnd::Finished);
    assert!(plan.short_of_peers());
    assert_eq!(plan.rediscover('b'), Rediscovered::Refreshed);
    assert_eq!(plan.rediscover('b'), Rediscovered::Unchanged);
    let req = plan.next_requests(Instant::now()).remove(0);
    for c in [0, 1] {
        assert_eq!(
            plan.on_chunk(req.id, c, &chunk_of(&bytes, c)),
            ChunkVerdict::Accept
        );
    }
    assert_eq!(plan.status(), PlanStatus::Done);
    assert_eq!(plan.liars(), vec![('a', 0)]);
}

#[test]
fn a_gone_peer_named_again_is_live_and_peers_are_bounded() {
    let bytes = blob(1);
    let cfg = PlanConfig {
        max_peers: 2,
        ..config()
    };
    let mut plan = FetchPlan::new(ChunkLayout::of_bytes(&bytes, CHUNK), &[], ['a'], cfg);
    plan.on_peer_gone(&'a');
    assert!(matches!(plan.status(), PlanStatus::NoProviders { .. }));
    assert_eq!(plan.rediscover('a'), Rediscovered::Refreshed);
    assert_eq!(plan.standing(&'a'), Some(PeerStanding::Live));
    assert_eq!(plan.rediscover('b'), Rediscovered::Joined);
    assert_eq!(plan.rediscover('c'), Rediscovered::Full);
    assert!(!plan.add_peer('c'));
    assert_eq!(plan.standing(&'c'), None);
}

/// How one simulated peer treats one chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Has {
    Holds,
    Lies,
    Lacks,
}

#[derive(Debug, Clone)]
struct SimPeer {
    chunks: Vec<Has>,
    /// Fails every request after this many.
    vanish_after: Option<usize>,
}

fn sim_peers(chunks: usize) -> impl Strategy<Value = Vec<SimPeer>> {
    let has = prop_oneof![3 => Just(Has::Holds), 1 => Just(Has::Lies), 1 => Just(Has::Lacks)];
    let peer = (
        proptest::collection::vec(has, chunks),
        proptest::option::of(0usize..4),
    )
        .prop_map(|(chunks, vanish_after)| SimPeer {
            chunks,
            vanish_after,
        });
    proptest::collection::vec(peer, 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever order replies and failures arrive in, no unverified chunk
    /// is accepted, honest peers are never banned, the fetch always finishes
    /// when every chunk has an honest holder that stays, and never when some
    /// chunk has no holder at all.
    #[test]
    fn planner_accepts_only_verified_chunks_and_finishes_iff_honestly_held(
        chunks in 1usize..7,
        peers in sim_peers(6),
        choices in proptest::collection::vec(any::<u16>(), 400),
    ) {
        let bytes = blob(chunks);
        let layout = ChunkLayout::of_bytes(&bytes, CHUNK);
        let mut plan = FetchPlan::new(layout, &[], 0..peers.len(), config());
        let mut now = Instant::now();
        let mut outstanding: Vec<(ChunkRequest<usize>, usize)> = Vec::new();
        let mut served = vec![0usize; peers.len()];
        let mut accepted = vec![false; chunks];
        let mut choice = choices.into_iter().cycle();
        for _ in 0..2000 {
            if plan.status() != PlanStatus::Running {
                break;
            }
            for r in plan.next_requests(now) {
                outstanding.push((r, 0));
            }
            let pick = choice.next().unwrap_or(0);
            if pick % 5 == 0 {
                now += Duration::from_millis(400);
            }
            if outstanding.is_empty() {
                continue;
            }
            let at = pick as usize % outstanding.len();
            let peer_ix = outstanding[at].0.peer;
            let peer = &peers[peer_ix];
            if peer.vanish_after.is_some_and(|n| served[peer_ix] >= n) {
                let (req, _) = outstanding.swap_remove(at);
                plan.on_request_end(req.id, RequestEnd::Failed);
                continue;
            }
            let (req, next) = &mut outstanding[at];
            if let Some(&c) = req.chunks.get(*next) {
                *next += 1;
                match peer.chunks[c as usize] {
                    Has::Holds => {
                        let v = plan.on_chunk(req.id, c, &chunk_of(&bytes, c));
                        let bad = matches!(v, ChunkVerdict::Lied { .. } | ChunkVerdict::Unexpected);
                        prop_assert!(!bad, "honest chunk refused: {:?}", v);
                        if v == ChunkVerdict::Accept {
                            prop_assert!(!accepted[c as usize], "chunk {} accepted twice", c);
                            accepted[c as usize] = true;
                        }
                    }
                    Has::Lies => {
                        let mut wrong = chunk_of(&bytes, c);
                        wrong[0] ^= 0x55;
                        let v = plan.on_chunk(req.id, c, &wrong);
                        // `Duplicate` (a copy of a chunk another peer already
                        // delivered, dropped unread) is fine: only `Accept` is written.
                        prop_assert!(v != ChunkVerdict::Accept);
                    }
                    Has::Lacks => plan.on_not_held(req.id, c),
                }
            } else {
                let (req, _) = outstanding.swap_remove(at);
                served[peer_ix] += 1;
                plan.on_request_end(req.id, RequestEnd::Finished);
            }
        }
        // Honest: never serves a wrong chunk (a liar is banned on its first
        // lie, so what else it holds may never be asked for).
        let honest = |p: &SimPeer| !p.chunks.contains(&Has::Lies);
        let status = plan.status();
        prop_assert!(status != PlanStatus::Running, "the fetch did not settle");
        if (0..chunks).all(|c| peers.iter().any(|p| honest(p) && p.vanish_after.is_none() && p.chunks[c] == Has::Holds)) {
            prop_assert_eq!(&status, &PlanStatus::Done);
        }
        if !(0..chunks).all(|c| peers.iter().any(|p| p.chunks[c] == Has::Holds)) {
            prop_assert!(matches!(status, PlanStatus::NoProviders { .. }), "{:?}", status);
        }
        prop_assert_eq!(status == PlanStatus::Done, accepted.iter().all(|a| *a));
        for (peer, _) in plan.liars() {
            prop_assert!(peers[peer].chunks.contains(&Has::Lies), "honest peer {} banned", peer);
        }
    }
}
