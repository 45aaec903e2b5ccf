//! Micro-benchmark of the state segment: publish and read throughput for
//! 0 B, 1 MiB and 64 MiB payloads, against a plain memcpy of the same size
//! measured in the same run.
//!
//! Each figure is the best of several rounds (the machine is shared, so the
//! best round is the one least disturbed).
//!
//! Run: `cargo run --release -p clawmesh-shm --example bench_segment`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use clawmesh_shm::StateSegment;

/// Payload sizes measured.
const SIZES: [(&str, usize); 3] = [("0 B", 0), ("1 MiB", 1 << 20), ("64 MiB", 64 << 20)];

/// Page size: buffers start on a page.
const PAGE: usize = 4096;

/// Rounds per figure; the best is kept.
const ROUNDS: usize = 5;

/// Bytes one round of one measurement moves, so every size runs long enough
/// to time (bounded by the iteration limits below).
const BYTES_PER_ROUND: usize = 512 << 20;

/// Iterations per round for the empty payload, and the bounds for others.
const EMPTY_ITERATIONS: usize = 100_000;
const MIN_ITERATIONS: usize = 4;
const MAX_ITERATIONS: usize = 2_000;

fn iterations(size: usize) -> usize {
    match size {
        0 => EMPTY_ITERATIONS,
        _ => (BYTES_PER_ROUND / size).clamp(MIN_ITERATIONS, MAX_ITERATIONS),
    }
}

/// Time per operation of one round of `iterations` calls of `op`.
fn round(iterations: usize, op: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        op();
    }
    start.elapsed() / u32::try_from(iterations).unwrap()
}

/// Best time per operation over the rounds, after one warm-up call.
fn best(iterations: usize, mut op: impl FnMut()) -> Duration {
    op();
    (0..ROUNDS)
        .map(|_| round(iterations, &mut op))
        .min()
        .unwrap()
}

fn mib_per_s(size: usize, per_op: Duration) -> String {
    if size == 0 {
        return "-".to_string();
    }
    format!(
        "{:.0}",
        size as f64 / (1 << 20) as f64 / per_op.as_secs_f64()
    )
}

fn main() {
    println!(
        "{:>7} | {:>9} {:>6} | {:>9} {:>6} | {:>9} {:>6} | {:>9} {:>6} | {:>6}",
        "size",
        "publish",
        "MiB/s",
        "read_with",
        "MiB/s",
        "read",
        "MiB/s",
        "memcpy",
        "MiB/s",
        "ratio"
    );
    for (label, size) in SIZES {
        let n = iterations(size);
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut segment = StateSegment::create(size as u64).unwrap();
        let publish = best(n, || {
            black_box(segment.publish(1, black_box(&payload)).unwrap());
        });
        // The destination starts on a page boundary, like the buffers; see
        // docs/SHM.md on 4K aliasing for what a destination 16 bytes past
        // one (a fresh large malloc) costs.
        let mut backing = vec![0u8; size + PAGE];
        let skip = backing.as_ptr().align_offset(PAGE);
        let target = &mut backing[skip..skip + size];
        let read_with = best(n, || {
            segment
                .read_with(|_, reader| reader.copy_to(target))
                .unwrap();
            black_box(&target);
        });
        let mut unaligned = vec![0u8; size];
        let read_with_unaligned = best(n, || {
            segment
                .read_with(|_, reader| reader.copy_to(&mut unaligned))
                .unwrap();
            black_box(&unaligned);
        });
        eprintln!(
            "{label}: read_with into a Vec at page offset {}: {:.1?} ({} MiB/s)",
            unaligned.as_ptr() as usize % PAGE,
            read_with_unaligned,
            mib_per_s(size, read_with_unaligned)
        );
        let read = best(n, || {
            black_box(segment.read().unwrap());
        });
        let mut copy = vec![0u8; size];
        let memcpy = best(n, || {
            copy.copy_from_slice(black_box(&payload));
            black_box(&copy);
        });
        // A publish and a read each move the payload once (plus a checksum):
        // compare with two plain copies.
        let ratio = if size == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.2}",
                (publish + read_with).as_secs_f64() / (2.0 * memcpy.as_secs_f64())
            )
        };
        println!(
            "{:>7} | {:>9.1?} {:>6} | {:>9.1?} {:>6} | {:>9.1?} {:>6} | {:>9.1?} {:>6} | {:>6}",
            label,
            publish,
            mib_per_s(size, publish),
            read_with,
            mib_per_s(size, read_with),
            read,
            mib_per_s(size, read),
            memcpy,
            mib_per_s(size, memcpy),
            ratio
        );
    }
}
