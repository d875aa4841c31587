//! A TCP proxy that a test can cut and restore: the worker reaches PostgreSQL, RabbitMQ or the
//! relay through it, so a test can take one dependency away from its own worker (an outage)
//! without stopping the machine's service under every other test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy on 127.0.0.1 to `target`. While cut, every open connection through it is closed
/// and new ones are accepted and closed at once (as a dead host behind a load balancer looks).
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so connections opened before it end.
    generation: watch::Sender<u64>,
    /// Connections being forwarded now.
    live: Arc<AtomicUsize>,
}

/// Counts a forwarded connection for as long as it lives.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let live = Arc::new(AtomicUsize::new(0));
        let proxy = FaultProxy {
            addr,
            cut: cut.clone(),
            generation: generation.clone(),
            live: live.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut ended = generation.subscribe();
                live.fetch_add(1, Ordering::SeqCst);
                let counted = Live(live.clone());
                tokio::spawn(async move {
                    let _counted = counted;
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        _ = ended.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    /// Closes every connection through the proxy and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// `cut`, returning once every connection that was open has been closed: nothing sent
    /// through the proxy before can reach the far side after this returns.
    pub async fn cut_and_settle(&self) {
        self.cut();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.live.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "connections through the proxy did not close"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}
