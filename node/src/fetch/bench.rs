//! `clawmesh bench fetch`: a blob fetched from several in-process peers on
//! loopback with the blob protocol, against a raw libp2p stream copy of the
//! same size over the same transport stack (TCP, noise, yamux), and the same
//! copy written to disk and fsynced, in one run, with the process's CPU per
//! MiB in each phase.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use rand::RngCore as _;

use super::buffers::BufferPool;
use super::client::{FetchConfig, fetch_blob};
use super::layout::ChunkLayout;
use super::loopback::{LoopbackNode, spawn_loopback_node};
use super::metrics::FetchMetrics;
use super::partial::{SYNC_STEP, Syncer};
use super::progress::FetchProgress;
use super::server::{ServeConfig, spawn_blob_server};
use super::source::Libp2pSource;
use crate::blob_store::{BlobStore, BlobStoreLimits};

/// The baseline's protocol: the client sends a u64 length, the server
/// writes that many bytes and closes.
pub const RAW_COPY_PROTOCOL: StreamProtocol = StreamProtocol::new("/clawmesh/bench-raw/1");
/// Largest blob the benchmark makes (the manifest's own bound).
pub const MAX_BENCH_MIB: u64 = clawmesh_crdt::manifest::MAX_BLOB_SIZE >> 20;
/// Buffer of the raw copy's writes and reads.
const RAW_BUF: usize = 1 << 20;
/// Buffers queued between the raw copy to disk and its disk thread.
const RAW_DISK_QUEUE: usize = 16;
/// Longest wait for any one step that talks to a peer (connect, open a
/// stream, read or write one buffer, shut a node down): the harness fails
/// with the step's name instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `step`, failing with `what` if it takes longer than `STEP_TIMEOUT`.
async fn within<T>(what: &str, step: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: nothing after {STEP_TIMEOUT:?}"))
}

/// `clawmesh bench fetch` options.
#[derive(Debug, Clone, Args)]
pub struct BenchFetchArgs {
    /// Blob size, MiB.
    #[arg(long, default_value_t = 100)]
    pub size_mib: u64,
    /// Chunk size, KiB (a power of two; the blob may have at most 1024 chunks).
    #[arg(long, default_value_t = 1024)]
    pub chunk_kib: u32,
    /// Peers holding the blob.
    #[arg(long, default_value_t = 3)]
    pub holders: usize,
    /// Chunks asked for in one request (one stream); default: the planner's.
    #[arg(long)]
    pub chunks_per_request: Option<usize>,
    /// Requests in flight to one peer; default: the planner's.
    #[arg(long)]
    pub requests_per_peer: Option<usize>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Throughputs measured by one run.
#[derive(Clone, Copy, Debug)]
pub struct BenchFetchFigures {
    /// Bytes moved by each side.
    pub bytes: u64,
    /// Blob fetch, from request to verified blob in the store.
    pub fetch: Duration,
    /// Raw copy over one stream.
    pub raw: Duration,
    /// CPU the whole process (fetcher and holders) used during the fetch.
    pub fetch_cpu: CpuUse,
    /// CPU the whole process (reader and sender) used during the raw copy.
    pub raw_cpu: CpuUse,
    /// Raw copy over one stream, written to a file and fsynced.
    pub raw_disk: Duration,
    /// CPU the whole process used during the raw copy to disk.
    pub raw_disk_cpu: CpuUse,
}

/// CPU time used by the bench process during one phase (kernel writeback
/// threads are not counted; fsync on the process's own threads is).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// User time.
    pub user: Duration,
    /// System time.
    pub system: Duration,
}

impl CpuUse {
    /// User plus system time.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }
}

impl BenchFetchFigures {
    fn mib_per_sec(&self, d: Duration) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(f64::EPSILON)
    }

    /// Fetch throughput, MiB/s.
    pub fn fetch_mib_s(&self) -> f64 {
        self.mib_per_sec(self.fetch)
    }

    /// Raw copy throughput, MiB/s.
    pub fn raw_mib_s(&self) -> f64 {
        self.mib_per_sec(self.raw)
    }

    /// Raw copy to disk throughput, MiB/s.
    pub fn raw_disk_mib_s(&self) -> f64 {
        self.mib_per_sec(self.raw_disk)
    }

    /// CPU milliseconds per MiB moved.
    pub fn cpu_ms_per_mib(&self, cpu: CpuUse) -> f64 {
        cpu.total().as_secs_f64() * 1000.0
            / (self.bytes as f64 / (1024.0 * 1024.0)).max(f64::EPSILON)
    }

    /// Fetch over raw (goal: at least 0.8).
    pub fn ratio(&self) -> f64 {
        self.fetch_mib_s() / self.raw_mib_s().max(f64::EPSILON)
    }
}

/// Runs `clawmesh bench fetch`.
pub fn run_bench_fetch(args: BenchFetchArgs) -> anyhow::Result<ExitCode> {
    if args.size_mib == 0 || args.size_mib > MAX_BENCH_MIB {
        bail!("--size-mib must be 1..={MAX_BENCH_MIB}");
    }
    if args.holders == 0 || args.holders > 16 {
        bail!("--holders must be 1..=16");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let figures = runtime.block_on(bench(&args))?;
    if args.json {
        let out = serde_json::json!({
            "bytes": figures.bytes,
            "holders": args.holders,
            "chunk_kib": args.chunk_kib,
            "fetch_mib_s": figures.fetch_mib_s(),
            "raw_stream_mib_s": figures.raw_mib_s(),
            "ratio": figures.ratio(),
            "raw_to_disk_mib_s": figures.raw_disk_mib_s(),
            "fetch_cpu_ms_per_mib": figures.cpu_ms_per_mib(figures.fetch_cpu),
            "raw_cpu_ms_per_mib": figures.cpu_ms_per_mib(figures.raw_cpu),
            "raw_to_disk_cpu_ms_per_mib": figures.cpu_ms_per_mib(figures.raw_disk_cpu),
        });
        println!("{out}");
    } else {
        println!(
            "blob fetch:  {} MiB from {} peers, {} KiB chunks: {:.2?} = {:.1} MiB/s",
            args.size_mib,
            args.holders,
            args.chunk_kib,
            figures.fetch,
            figures.fetch_mib_s()
        );
        println!(
            "raw stream:  {} MiB over one libp2p stream: {:.2?} = {:.1} MiB/s",
            args.size_mib,
            figures.raw,
            figures.raw_mib_s()
        );
        println!(
            "raw to disk: {} MiB over one libp2p stream, written and fsynced: {:.2?} = {:.1} MiB/s",
            args.size_mib,
            figures.raw_disk,
            figures.raw_disk_mib_s()
        );
        for (what, cpu) in [
            ("blob fetch ", figures.fetch_cpu),
            ("raw stream ", figures.raw_cpu),
            ("raw to disk", figures.raw_disk_cpu),
        ] {
            println!(
                "cpu {what}: user {:.0?} + system {:.0?} = {:.2} ms/MiB",
                cpu.user,
                cpu.system,
                figures.cpu_ms_per_mib(cpu)
            );
        }
        println!("ratio fetch/raw: {:.2} (goal >= 0.8)", figures.ratio());
        println!(
            "ratio fetch/raw to disk: {:.2}",
            figures.fetch_mib_s() / figures.raw_disk_mib_s().max(f64::EPSILON)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Measures one run: holders start, a fresh node fetches the blob, then the
/// same node reads as many raw bytes from one holder over one stream, then
/// again into a file it fsyncs.
pub async fn bench(args: &BenchFetchArgs) -> anyhow::Result<BenchFetchFigures> {
    let size = usize::try_from(args.size_mib << 20).context("blob size")?;
    let chunk_size = args.chunk_kib.checked_mul(1024).context("chunk size")?;
    let mut blob = vec![0u8; size];
    rand::rng().fill_bytes(&mut blob);
    let layout = ChunkLayout::of_bytes(&blob, chunk_size);
    if layout.chunk_count() > clawmesh_crdt::manifest::MAX_CHUNKS {
        bail!("{} chunks; use a larger --chunk-kib", layout.chunk_count());
    }
    let dirs = tempfile::tempdir().context("temp dir")?;
    let metrics = FetchMetrics::default();
    let mut holders: Vec<LoopbackNode> = Vec::new();
    let mut servers = Vec::new();
    for i in 0..args.holders {
        let store = BlobStore::open(
            dirs.path().join(format!("holder{i}")),
            BlobStoreLimits::default(),
        )?;
        store.put(&blob, Some(&layout.blob), chunk_size)?;
        let node = within("starting a holder", spawn_loopback_node(Vec::new())).await??;
        servers.push(spawn_blob_server(
            &node.mesh,
            Arc::new(store),
            ServeConfig::default(),
            metrics.clone(),
        )?);
        let mut control = node.mesh.stream_control();
        let incoming = control
            .accept(RAW_COPY_PROTOCOL)
            .context("raw copy protocol")?;
        servers.push(tokio::spawn(serve_raw(incoming)));
        holders.push(node);
    }
    drop(blob);
    let fetcher = within(
        "starting the fetcher",
        spawn_loopback_node(holders.iter().map(|h| h.addr.clone()).collect()),
    )
    .await??;
    let peers: Vec<PeerId> = holders.iter().map(LoopbackNode::peer_id).collect();
    // Connections first, so neither figure includes dialling. Streams are
    // opened only once the mesh reports each connection: an open racing the
    // first connection's setup can wait forever inside `libp2p_stream`.
    fetcher.wait_connected(&peers, STEP_TIMEOUT).await?;
    for &peer in &peers {
        raw_copy(&fetcher, peer, 1).await?;
    }
    let store = BlobStore::open(dirs.path().join("fetcher"), BlobStoreLimits::default())?;
    let mut config = FetchConfig::default();
    if let Some(n) = args.chunks_per_request {
        config.plan.max_chunks_per_request = n.clamp(1, super::wire::MAX_CHUNKS_PER_REQUEST);
    }
    if let Some(n) = args.requests_per_peer {
        config.plan.max_requests_per_peer = n.clamp(1, 64);
    }
    let source = Arc::new(Libp2pSource::new(
        fetcher.mesh.stream_control(),
        config.chunk_timeout,
    ));
    let cpu = ProcessCpu::now();
    let started = Instant::now();
    tracing::info!(at = ?started, "fetch starts");
    let report = fetch_blob(
        &store,
        layout,
        peers.clone(),
        source,
        &config,
        &metrics,
        &FetchProgress::hidden(),
    )
    .await?;
    let fetch = started.elapsed();
    let fetch_cpu = cpu.since();
    tracing::info!(peers_used = ?report.peers_used, at = ?Instant::now(), "bench fetch done");
    let cpu = ProcessCpu::now();
    let started = Instant::now();
    tracing::info!(at = ?started, "raw copy starts");
    raw_copy(&fetcher, peers[0], size as u64).await?;
    let raw = started.elapsed();
    let raw_cpu = cpu.since();
    tracing::info!(at = ?Instant::now(), "raw copy done");
    let cpu = ProcessCpu::now();
    let started = Instant::now();
    let file = dirs.path().join("fetcher").join("tmp").join("raw-copy");
    raw_copy_to_disk(&fetcher, peers[0], size as u64, &file).await?;
    let raw_disk = started.elapsed();
    let raw_disk_cpu = cpu.since();
    tracing::info!(at = ?Instant::now(), "raw copy to disk done");
    for s in servers {
        s.abort();
    }
    within("stopping the fetcher", fetcher.mesh.shutdown()).await?;
    for h in holders {
        within("stopping a holder", h.mesh.shutdown()).await?;
    }
    Ok(BenchFetchFigures {
        bytes: size as u64,
        fetch,
        raw,
        fetch_cpu,
        raw_cpu,
        raw_disk,
        raw_disk_cpu,
    })
}

/// The raw copy again, its bytes written to `path` as they arrive by a
/// thread of their own and made durable the way a fetch makes its temp file
/// durable (the page cache, a sync thread asked every `SYNC_STEP` bytes
/// written, then a final fsync): the least any durable copy of these bytes
/// takes here.
async fn raw_copy_to_disk(
    node: &LoopbackNode,
    peer: PeerId,
    bytes: u64,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let pool = BufferPool::new(RAW_DISK_QUEUE + 2);
    let (to_disk, mut arrived) = tokio::sync::mpsc::channel::<Vec<u8>>(RAW_DISK_QUEUE);
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let writer = {
        let pool = pool.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write as _;
            let syncer = Syncer::start(file.try_clone()?)?;
            let mut file = file;
            let mut unsynced = 0u64;
            while let Some(buf) = arrived.blocking_recv() {
                file.write_all(&buf)?;
                unsynced += buf.len() as u64;
                pool.give(buf);
                if unsynced >= SYNC_STEP {
                    syncer.ask();
                    unsynced = 0;
                }
            }
            syncer.stop()?;
            file.sync_all()
        })
    };
    let mut control = node.mesh.stream_control();
    let mut stream = within(
        "opening a raw stream",
        control.open_stream(peer, RAW_COPY_PROTOCOL),
    )
    .await?
    .context("opening raw stream")?;
    within("sending the raw copy's length", async {
        stream.write_all(&bytes.to_be_bytes()).await?;
        stream.flush().await
    })
    .await??;
    let mut left = bytes;
    while left > 0 {
        let want = usize::try_from(left.min(RAW_BUF as u64)).unwrap_or(RAW_BUF);
        let mut buf = pool.take(want);
        within("reading the raw copy", stream.read_exact(&mut buf)).await??;
        left -= want as u64;
        if to_disk.send(buf).await.is_err() {
            break;
        }
    }
    drop(to_disk);
    writer.await.context("raw copy's disk thread")??;
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}

/// CPU time (user, system) this process used since a point.
struct ProcessCpu(Duration, Duration);

impl ProcessCpu {
    fn read() -> (Duration, Duration) {
        use nix::sys::resource::{UsageWho, getrusage};
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
            )
        };
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(u) => (tv(u.user_time()), tv(u.system_time())),
            Err(_) => (Duration::ZERO, Duration::ZERO),
        }
    }

    fn now() -> Self {
        let (user, system) = Self::read();
        Self(user, system)
    }

    fn since(&self) -> CpuUse {
        let (user, system) = Self::read();
        CpuUse {
            user: user.saturating_sub(self.0),
            system: system.saturating_sub(self.1),
        }
    }
}

async fn raw_copy(node: &LoopbackNode, peer: PeerId, bytes: u64) -> anyhow::Result<()> {
    let mut control = node.mesh.stream_control();
    let mut stream = within(
        "opening a raw stream",
        control.open_stream(peer, RAW_COPY_PROTOCOL),
    )
    .await?
    .context("opening raw stream")?;
    within("sending the raw copy's length", async {
        stream.write_all(&bytes.to_be_bytes()).await?;
        stream.flush().await
    })
    .await??;
    let mut buf = vec![0u8; RAW_BUF];
    let mut left = bytes;
    while left > 0 {
        let want = usize::try_from(left.min(RAW_BUF as u64)).unwrap_or(RAW_BUF);
        let n = within("reading the raw copy", stream.read(&mut buf[..want])).await??;
        if n == 0 {
            bail!("raw stream ended with {left} bytes to go");
        }
        left -= n as u64;
    }
    Ok(())
}

async fn serve_raw(mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((_, mut stream)) = incoming.next().await {
        tokio::spawn(async move {
            let mut len = [0u8; 8];
            if !matches!(
                within("raw length", stream.read_exact(&mut len)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            let mut left = u64::from_be_bytes(len).min(clawmesh_crdt::manifest::MAX_BLOB_SIZE);
            let buf = vec![0x5au8; RAW_BUF];
            while left > 0 {
                let n = usize::try_from(left.min(RAW_BUF as u64)).unwrap_or(RAW_BUF);
                if !matches!(
                    within("raw write", stream.write_all(&buf[..n])).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
                left -= n as u64;
            }
            let _ = within("raw close", stream.close()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full benchmark: run with
    /// `cargo test --release -p clawmesh-node --lib fetch::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: 100 MiB, run in release mode"]
    fn bench_fetch_100_mib() {
        let code = run_bench_fetch(BenchFetchArgs {
            size_mib: 100,
            chunk_kib: 1024,
            holders: 3,
            chunks_per_request: None,
            requests_per_peer: None,
            json: false,
        })
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
    }

    // It once hung with no CPU: the harness opened its first raw stream
    // while the fetcher's bootstrap connection was half set up, and
    // `libp2p_stream` parked the open for a dial that never came. The
    // harness now waits for the connections and bounds every step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_run_moves_the_bytes_both_ways() {
        let figures = bench(&BenchFetchArgs {
            size_mib: 2,
            chunk_kib: 64,
            holders: 2,
            chunks_per_request: None,
            requests_per_peer: None,
            json: false,
        })
        .await
        .unwrap();
        assert_eq!(figures.bytes, 2 << 20);
        assert!(figures.fetch > Duration::ZERO && figures.raw > Duration::ZERO);
        assert!(figures.raw_disk > Duration::ZERO);
        assert!(
            figures.fetch_cpu.total() > Duration::ZERO,
            "the fetch used no CPU?"
        );
    }
}
