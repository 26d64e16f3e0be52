//! The handler race over real loopback sockets: a revocation resets both legs and keeps
//! the counts, and a connection task cancelled mid-relay is still recorded with the
//! bytes it relayed.
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tollgate_policy::Decision;

use super::{Handler, Progress, RelayError, run};
use crate::{
    metrics::Metrics,
    proxy::access::{AccessLog, Sinks},
    record::{Store, writer},
};

/// An echo server on loopback: what it reads, it writes back.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A connected pair: the job's end, and the proxy's accepted end.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let job = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (job, accepted)
}

/// Writes `n` ordinary bytes through the relay and reads them back.
async fn round_trip(job: &mut TcpStream, n: usize) {
    let sent: Vec<u8> = (0..n).map(|i| b"select 1;\n"[i % 10]).collect();
    job.write_all(&sent).await.unwrap();
    let mut back = vec![0u8; n];
    job.read_exact(&mut back).await.unwrap();
    assert_eq!(back, sent);
}

#[tokio::test]
async fn a_revoked_connection_is_reset_with_its_counts_kept() {
    let server = echo().await;
    let (mut job, client) = pair().await;
    let upstream = TcpStream::connect(server).await.unwrap();
    let progress = Progress::default();
    let (revoke, revoked) = oneshot::channel();
    let handled = run(
        Handler::Tcp { buffer_size: 4096 },
        client,
        upstream,
        &progress,
        Some(revoked),
    );
    let driven = async {
        round_trip(&mut job, 3000).await;
        revoke.send(Decision::deny("a reload denies it")).unwrap();
        // The job sees a reset, not an orderly end.
        let mut rest = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), job.read(&mut rest))
            .await
            .expect("the job's read ends")
    };
    let (outcome, read) = tokio::join!(handled, driven);
    assert!(matches!(outcome.error, Some(RelayError::Revoked)));
    assert_eq!(
        outcome.revoked.map(|d| d.reason).as_deref(),
        Some("a reload denies it")
    );
    let error = read.expect_err("a reset, not EOF");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(progress.bytes(), (3000, 3000));
}

#[tokio::test]
async fn without_a_revocation_the_relay_ends_in_order() {
    // The control: the same relay, no reload; the job's close ends it with EOF both ways.
    let server = echo().await;
    let (mut job, client) = pair().await;
    let upstream = TcpStream::connect(server).await.unwrap();
    let progress = Progress::default();
    let (_revoke, revoked) = oneshot::channel::<Decision>();
    let handled = run(
        Handler::Tcp { buffer_size: 4096 },
        client,
        upstream,
        &progress,
        Some(revoked),
    );
    let driven = async {
        round_trip(&mut job, 1234).await;
        job.shutdown().await.unwrap();
        let mut rest = Vec::new();
        job.read_to_end(&mut rest).await.unwrap()
    };
    let (outcome, left) = tokio::join!(handled, driven);
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert!(outcome.revoked.is_none());
    assert_eq!(left, 0);
    assert_eq!(progress.bytes(), (1234, 1234));
}

#[tokio::test]
async fn a_cancelled_connection_task_is_recorded_with_the_bytes_relayed_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("records.db");
    let metrics = Metrics::new();
    let (recorder, handle) = writer::spawn(
        &db,
        crate::record::writer::WriterOptions {
            capacity: 1024,
            batch_size: 64,
            flush_interval: Duration::from_millis(20),
            ..Default::default()
        },
        metrics.record.clone(),
    )
    .unwrap();
    let server = echo().await;
    let (mut job, client) = pair().await;
    let peer = job.local_addr().unwrap();
    let upstream = TcpStream::connect(server).await.unwrap();
    let (id_tx, id_rx) = oneshot::channel();
    // The connection task as the proxy runs it: a guard, then the handler.
    let task = async {
        let log = AccessLog::with(
            Sinks {
                metrics: &metrics.proxy,
                policy_metrics: &metrics.policy,
                recorder: &recorder,
            },
            peer,
        );
        let _ = id_tx.send(log.id().to_owned());
        run(
            Handler::Tcp { buffer_size: 4096 },
            client,
            upstream,
            log.progress(),
            None,
        )
        .await
    };
    let driven = async {
        round_trip(&mut job, 2500).await;
        round_trip(&mut job, 500).await;
    };
    // The drain timeout's cancellation: the task is dropped while the relay still runs.
    tokio::select! {
        _ = task => panic!("the relay cannot end while the job's connection is open"),
        () = driven => {}
    }
    let id = id_rx.await.unwrap();
    drop(recorder);
    handle.shutdown();
    let record = Store::open(&db).unwrap().connection(&id).unwrap();
    assert_eq!((record.bytes_up, record.bytes_down), (3000, 3000));
    assert!(record.ended_at.is_some());
    assert_eq!(
        metrics.proxy.active.get(),
        0,
        "the guard's Drop ran: the connection is no longer counted active"
    );
}

#[test]
fn progress_counts_statements_and_refusals_apart() {
    let progress = Progress::default();
    assert_eq!(progress.statements(), (0, 0));
    progress.statement(false);
    progress.statement(true);
    progress.statement(false);
    assert_eq!(progress.statements(), (3, 1));
    progress.up(5);
    assert_eq!(progress.bytes(), (5, 0));
}

#[tokio::test]
async fn a_revocable_connection_holds_its_legs_and_a_replaced_leg_is_let_go() {
    let addr = echo().await;
    let (client, first, second) = (
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    );
    let inode = |fd: &dyn std::os::fd::AsFd| {
        let stat = nix::sys::stat::fstat(fd.as_fd()).unwrap();
        (stat.st_dev, stat.st_ino)
    };
    let progress = Progress::default();
    progress.new_upstream(&second);
    assert!(progress.legs().is_none(), "nothing held unless revocable");
    progress.hold(&client, &first);
    progress.new_upstream(&second);
    let legs = progress.legs();
    let legs = legs.as_ref().expect("held");
    assert_eq!(inode(legs.client.as_ref().unwrap()), inode(&client));
    assert_eq!(inode(legs.upstream.as_ref().unwrap()), inode(&second));
}
