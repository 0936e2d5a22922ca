//! Random bytes for identifiers (machine-id, STATE's filesystem UUID) at early boot.

/// 16 bytes from the kernel's generator without waiting for it to be seeded (getrandom's
/// GRND_INSECURE, Linux 5.6+): blocking reads wait for jitter entropy first, about a second at
/// first boot under emulation. Identifiers must be unique, not secret. `None` on older kernels.
pub fn bytes16() -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    // SAFETY: the kernel writes at most `b.len()` bytes into `b`, which outlives the call.
    let n = unsafe { nix::libc::getrandom(b.as_mut_ptr().cast(), b.len(), nix::libc::GRND_INSECURE) };
    (n == b.len() as isize).then_some(b)
}
