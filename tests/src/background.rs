//! A loopback server on a thread of its own with its own tokio runtime, shared by the
//! test HTTP server and the IMDS server: bind an ephemeral port, accept connections and
//! hand each to `serve`, stop and join on drop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long dropping the server waits for its connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Background {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Listens on `127.0.0.1` at an ephemeral port; `serve` handles each connection.
    pub fn start<F, Fut>(name: &str, serve: F) -> io::Result<Background>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (shutdown, stop) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("molt-test-{name}-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, serve, stop));
                // Drops the connection tasks (stalls included).
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })?;
        Ok(Background {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    serve: F,
    mut stop: oneshot::Receiver<()>,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}
