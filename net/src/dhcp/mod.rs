//! DHCPv4 (RFC 2131): the wire format, the client state machine and its sockets.

pub mod client;
pub mod io;
pub mod message;

#[cfg(test)]
mod fuzz;
