//! Listening sockets: addresses as the config spells them, and SO_REUSEPORT listeners with
//! the backlog the config asks for (glommio's own `bind` fixes it at 1024).

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

/// Parses `host:port` where host is an IP literal (`[::1]:80` for IPv6) or `localhost`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: port is not a number 0-65535"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP:port address (e.g. 127.0.0.1:8080)"))
}

/// Binds a listening socket with SO_REUSEPORT and the given backlog, for the current
/// executor. Must be called on a glommio executor thread.
pub fn bind_listener(addr: &str, backlog: u32) -> io::Result<TcpListener> {
    let addr = parse_addr(addr).map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    // SAFETY: the fd is a freshly created, bound, listening TCP socket that we own and
    // hand over exactly once.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}
