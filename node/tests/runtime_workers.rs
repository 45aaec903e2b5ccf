//! The runtime on real worker processes: `clawmesh worker` started by the
//! supervisor, the sample skills built by `scripts/build-skills`, and this
//! host's cgroups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use std::time::Duration;

use axum::body::Bytes;
use clawmesh_node::runtime::frame::Request;
use clawmesh_node::runtime::{CgroupLimits, CgroupSupport, DeployError, SkillLimits, WorkerState};
use runtime_common::{Harness, http_exchange, http_exchange_declaring, wait_for_restart};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_answers_pipelined_calls_and_reports_status() {
    let harness = Harness::new("counter");
    harness
        .deploy("counter", "counter", SkillLimits::default())
        .await
        .unwrap();
    let sv = &harness.supervisor;
    assert_eq!(
        sv.invoke("counter", "add".into(), Bytes::from_static(b"5"))
            .await
            .unwrap(),
        "5"
    );
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let sv = sv.clone();
            tokio::spawn(async move { sv.invoke("counter", "add".into(), Bytes::new()).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        sv.invoke("counter", "get".into(), Bytes::new())
            .await
            .unwrap(),
        "55"
    );

    let error = sv
        .invoke("counter", "nope".into(), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(error.code(), "skill_error", "{error}");
    let error = sv
        .invoke("absent", "get".into(), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(error.code(), "no_such_skill");

    let status = sv.status();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (
            status[0].package.as_str(),
            status[0].state,
            status[0].restarts
        ),
        ("counter", WorkerState::Ready, 0)
    );
    assert!(status[0].pid.is_some());
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_hits_its_deadline_while_another_skill_keeps_answering() {
    let harness = Harness::new("loop");
    let deadline = Duration::from_millis(300);
    harness
        .deploy(
            "loop",
            "fixture_loop",
            SkillLimits {
                deadline,
                ..SkillLimits::default()
            },
        )
        .await
        .unwrap();
    harness
        .deploy("counter", "counter", SkillLimits::default())
        .await
        .unwrap();
    let sv = harness.supervisor.clone();
    let looping = {
        let sv = sv.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            (
                sv.invoke("loop", "spin".into(), Bytes::new()).await,
                started.elapsed(),
            )
        })
    };
    for expected in ["1", "2", "3"] {
        assert_eq!(
            sv.invoke("counter", "add".into(), Bytes::new())
                .await
                .unwrap(),
            expected
        );
    }
    let (result, elapsed) = looping.await.unwrap();
    let error = result.unwrap_err();
    assert_eq!(error.code(), "deadline_exceeded", "{error}");
    assert!(
        elapsed >= deadline,
        "interrupted after {elapsed:?}, before its deadline"
    );
    // Same worker, fresh instance: it still serves.
    let pid = sv.route("loop").unwrap().active().pid();
    let route = sv.route("loop").unwrap();
    route.active().request(&Request::Health).await.unwrap();
    assert_eq!(
        sv.invoke("loop", "spin".into(), Bytes::new())
            .await
            .unwrap_err()
            .code(),
        "deadline_exceeded"
    );
    assert_eq!(route.active().pid(), pid);
    assert_eq!(route.active().restarts(), 0);
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_trapped_at_the_store_limit_and_the_worker_keeps_serving() {
    let harness = Harness::new("alloc");
    let limits = SkillLimits {
        wasm_memory_bytes: 32 << 20,
        ..SkillLimits::default()
    };
    harness
        .deploy("alloc", "fixture_alloc", limits)
        .await
        .unwrap();
    let sv = &harness.supervisor;
    let route = sv.route("alloc").unwrap();
    let pid = route.active().pid();
    for _ in 0..2 {
        let error = sv
            .invoke("alloc", "hoard".into(), Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(error.code(), "memory_limit", "{error}");
    }
    route.active().request(&Request::Health).await.unwrap();
    assert_eq!((route.active().pid(), route.active().restarts()), (pid, 0));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_is_restarted_and_serves_again() {
    let harness = Harness::new("kill");
    harness
        .deploy("counter", "counter", SkillLimits::default())
        .await
        .unwrap();
    let sv = &harness.supervisor;
    assert_eq!(
        sv.invoke("counter", "add".into(), Bytes::new())
            .await
            .unwrap(),
        "1"
    );
    let worker = sv.route("counter").unwrap().active();
    let old_pid = worker.pid().unwrap();
    let lifecycle = worker.lifecycle();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for_restart(lifecycle, 1).await;
    let new_pid = worker.pid().unwrap();
    assert_ne!(new_pid, old_pid);
    // The state was the old instance's; checkpoints arrive with the swap work.
    assert_eq!(
        sv.invoke("counter", "add".into(), Bytes::new())
            .await
            .unwrap(),
        "1"
    );
    let status = sv.status();
    assert_eq!(status[0].restarts, 1);
    assert!(
        status[0].last_exit.as_deref().unwrap().contains("SIGKILL"),
        "{:?}",
        status[0].last_exit
    );
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_refused_at_deploy_with_the_problem_named() {
    let harness = Harness::new("refuse");
    let error = harness
        .deploy("bytes", "fixture_not_a_component", SkillLimits::default())
        .await
        .unwrap_err();
    let DeployError::Load { message, .. } = &error else {
        panic!("expected a load error, got {error}")
    };
    assert!(message.contains("not a WebAssembly component"), "{message}");

    let error = harness
        .deploy("greeter", "fixture_wrong_world", SkillLimits::default())
        .await
        .unwrap_err();
    let DeployError::Load { message, .. } = &error else {
        panic!("expected a load error, got {error}")
    };
    assert!(
        message.contains("clawmesh:skill"),
        "the message names the expected world: {message}"
    );

    let mut corrupt = harness.skill("counter");
    corrupt.sha256[0] ^= 0xff;
    let error = harness.supervisor.deploy(corrupt).await.unwrap_err();
    assert!(error.to_string().contains("sha256 mismatch"), "{error}");

    assert!(
        harness.supervisor.status().is_empty(),
        "nothing refused is routed"
    );
    harness.assert_no_worker_cgroups();
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_gets_a_cgroup_with_its_limits_removed_on_stop() {
    let harness = Harness::new("cgroup");
    let cgroup = CgroupLimits {
        memory_max_bytes: 256 << 20,
        pids_max: 32,
        cpu_weight: 50,
    };
    harness
        .deploy(
            "counter",
            "counter",
            SkillLimits {
                cgroup,
                ..SkillLimits::default()
            },
        )
        .await
        .unwrap();
    let status = harness.supervisor.status().remove(0);
    let pid = status.pid.unwrap().to_string();
    let cg = status
        .cgroup
        .clone()
        .unwrap_or_else(|| panic!("no cgroup: {:?}", harness.supervisor.cgroup_support()));
    let read = |dir: &std::path::Path, file: &str| {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    match harness.supervisor.cgroup_support() {
        CgroupSupport::V1 { .. } => {
            assert_eq!(cg.version, "v1");
            let [memory, pids, cpu] = &cg.dirs[..] else {
                panic!("v1 has three hierarchies: {:?}", cg.dirs)
            };
            assert_eq!(
                read(memory, "memory.limit_in_bytes"),
                (256u64 << 20).to_string()
            );
            assert_eq!(read(pids, "pids.max"), "32");
            assert_eq!(read(cpu, "cpu.shares"), "512");
            for dir in &cg.dirs {
                assert!(
                    read(dir, "cgroup.procs").lines().any(|line| line == pid),
                    "worker {pid} not in {}",
                    dir.display()
                );
            }
        }
        CgroupSupport::V2 { .. } => {
            let [dir] = &cg.dirs[..] else {
                panic!("v2 has one hierarchy: {:?}", cg.dirs)
            };
            assert_eq!(read(dir, "memory.max"), (256u64 << 20).to_string());
            assert_eq!(read(dir, "pids.max"), "32");
            assert_eq!(read(dir, "cpu.weight"), "50");
            assert!(read(dir, "cgroup.procs").lines().any(|line| line == pid));
        }
        CgroupSupport::Unavailable { reason } => {
            panic!("this host should support cgroups: {reason}")
        }
    }
    assert!(status.memory_bytes.is_some_and(|bytes| bytes > 0));
    assert!(harness.supervisor.stop("counter").await);
    for dir in &cg.dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_cgroup_memory_is_killed_by_the_kernel_and_restarted() {
    let harness = Harness::new("oom");
    if matches!(
        harness.supervisor.cgroup_support(),
        CgroupSupport::Unavailable { .. }
    ) {
        panic!(
            "this host should support cgroups: {:?}",
            harness.supervisor.cgroup_support()
        );
    }
    // The store limit (1 GiB) is far above the cgroup's, so the kernel acts first.
    let limits = SkillLimits {
        wasm_memory_bytes: 1 << 30,
        cgroup: CgroupLimits {
            memory_max_bytes: 160 << 20,
            ..CgroupLimits::default()
        },
        ..SkillLimits::default()
    };
    harness
        .deploy("alloc", "fixture_alloc", limits)
        .await
        .unwrap();
    harness
        .deploy("counter", "counter", SkillLimits::default())
        .await
        .unwrap();
    let sv = &harness.supervisor;
    let worker = sv.route("alloc").unwrap().active();
    let lifecycle = worker.lifecycle();
    let error = sv
        .invoke("alloc", "hoard".into(), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(error.code(), "worker_unavailable", "{error}");
    wait_for_restart(lifecycle, 1).await;
    let last_exit = sv
        .status()
        .into_iter()
        .find(|s| s.package == "alloc")
        .unwrap()
        .last_exit
        .unwrap();
    assert!(last_exit.contains("SIGKILL"), "{last_exit}");
    // The other skill never noticed.
    assert_eq!(
        sv.invoke("counter", "add".into(), Bytes::new())
            .await
            .unwrap(),
        "1"
    );
    worker.request(&Request::Health).await.unwrap();
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_moves_out_and_in_through_snapshot_and_restore_frames() {
    use clawmesh_node::runtime::frame::decode_state;
    let harness = Harness::new("state");
    harness
        .deploy("counter", "counter", SkillLimits::default())
        .await
        .unwrap();
    let sv = &harness.supervisor;
    sv.invoke("counter", "add".into(), Bytes::from_static(b"5"))
        .await
        .unwrap();
    let worker = sv.route("counter").unwrap().active();
    let snapshot = worker.request(&Request::Snapshot).await.unwrap();
    assert_eq!(
        decode_state(&snapshot).unwrap(),
        (1, &5u64.to_le_bytes()[..])
    );
    let seven = 7u64.to_le_bytes();
    worker
        .request(&Request::Restore {
            schema: 1,
            data: &seven,
        })
        .await
        .unwrap();
    assert_eq!(
        sv.invoke("counter", "get".into(), Bytes::new())
            .await
            .unwrap(),
        "7"
    );
    let error = worker
        .request(&Request::Restore {
            schema: 99,
            data: &seven,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), "skill_error", "{error}");
    // The segment frame without its fd is refused, and the worker goes on.
    let error = worker.request(&Request::AttachSegment).await.unwrap_err();
    assert_eq!(error.code(), "bad_request", "{error}");
    assert!(error.to_string().contains("without an fd"), "{error}");
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_handle_is_reported_and_the_worker_serves_the_next_call() {
    let harness = Harness::new("trap");
    harness
        .deploy("trap", "fixture_trap_handle", SkillLimits::default())
        .await
        .unwrap();
    let sv = &harness.supervisor;
    let worker = sv.route("trap").unwrap().active();
    let pid = worker.pid();
    for _ in 0..2 {
        let error = sv
            .invoke("trap", "boom".into(), Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(error.code(), "trap", "{error}");
    }
    worker.request(&Request::Health).await.unwrap();
    // A fresh instance answers (the trapped one's state went with it).
    assert_eq!(
        sv.invoke("trap", "add".into(), Bytes::new()).await.unwrap(),
        "1"
    );
    assert_eq!((worker.pid(), worker.restarts()), (pid, 0));
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_http_server_answers_invoke_directly_and_everything_else_through_the_router() {
    use clawmesh_node::runtime::{RuntimeHttpState, http};
    let harness = Harness::new("serve");
    harness
        .deploy("counter", "counter", SkillLimits::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http::serve(
        listener,
        RuntimeHttpState::new(harness.supervisor.clone()),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));

    // The fast path: plain invoke paths.
    assert_eq!(
        http_exchange(addr, "POST", "/v1/skills/counter/add", b"41").await,
        (200, "41".into())
    );
    let (status, body) = http_exchange(addr, "POST", "/v1/skills/counter/add", b"many").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"skill_error\""), "{body}");
    let (status, body) = http_exchange(addr, "POST", "/v1/skills/absent/get", b"").await;
    assert_eq!(
        (status, body.contains("\"no_such_skill\"")),
        (404, true),
        "{body}"
    );
    // A body over one frame is refused from its Content-Length, unread.
    let too_large = clawmesh_node::runtime::frame::MAX_PAYLOAD + 1;
    let (status, body) =
        http_exchange_declaring(addr, "POST", "/v1/skills/counter/add", too_large, b"").await;
    assert_eq!(
        (status, body.contains("\"input_too_large\"")),
        (413, true),
        "{body}"
    );

    // Through the router: escaped segments are decoded the same way, other
    // methods and routes answer as the router does.
    assert_eq!(
        http_exchange(addr, "POST", "/v1/skills/count%65r/add", b"").await,
        (200, "42".into())
    );
    assert_eq!(
        http_exchange(addr, "GET", "/v1/skills/counter/add", b"")
            .await
            .0,
        405
    );
    assert_eq!(
        http_exchange(addr, "POST", "/v1/skills/counter", b"")
            .await
            .0,
        404
    );
    assert_eq!(
        http_exchange(addr, "GET", "/livez", b"").await,
        (200, "ok\n".into())
    );
    let (status, body) = http_exchange(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("clawmesh_skill_requests_total{package=\"counter\"} 3"),
        "{body}"
    );

    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed once serve returns"
    );
    harness.shutdown().await;
}
