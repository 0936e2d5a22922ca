//! The loopback interface; the ioctl lives with the other interface code in `crate::network`.

pub use crate::network::link::loopback_up;
