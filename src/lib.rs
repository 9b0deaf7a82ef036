//! Build, publish and serve LXD and Incus images over the simplestreams protocol.

pub mod server;
