//! The fake LND's TCP front: it accepts on the node's address and pipes each connection (TLS stays
//! end to end) to the gRPC server, so a test can take the node off the network and back.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Commands to the TCP front.
pub(super) enum FrontCommand {
    /// Drop every connection and refuse new ones.
    Down,
    /// Accept again on this (re-bound) listener.
    Up(tokio::net::TcpListener),
}

/// The TCP front: accepts on the node's address and pipes each connection to the gRPC server,
/// until told to go down (connections dropped, listener closed) and back up.
pub(super) async fn run_front(
    first: tokio::net::TcpListener,
    inner: SocketAddr,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<FrontCommand>,
    shutdown: CancellationToken,
) {
    let mut listener = Some(first);
    loop {
        let Some(current) = listener.take() else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    Some(FrontCommand::Up(bound)) => listener = Some(bound),
                    Some(FrontCommand::Down) => {}
                    None => return,
                },
            }
            continue;
        };
        let connections = shutdown.child_token();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    Some(FrontCommand::Down) | None => {
                        connections.cancel();
                        break;
                    }
                    Some(FrontCommand::Up(bound)) => {
                        connections.cancel();
                        listener = Some(bound);
                        break;
                    }
                },
                accepted = current.accept() => {
                    if let Ok((socket, _)) = accepted {
                        tokio::spawn(pipe(socket, inner, connections.clone()));
                    }
                }
            }
        }
        drop(current);
    }
}

async fn pipe(
    mut client: tokio::net::TcpStream,
    inner: SocketAddr,
    connections: CancellationToken,
) {
    let Ok(mut server) = tokio::net::TcpStream::connect(inner).await else {
        return;
    };
    tokio::select! {
        _ = connections.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}
