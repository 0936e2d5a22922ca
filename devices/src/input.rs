//! Input devices with a power key: the ACPI `button` driver's "Power Button" (and Hyper-V's
//! keyboard, a virtio keyboard) report `KEY_POWER` through evdev, as logind watches for it.

use std::os::fd::AsRawFd;
use std::path::Path;

/// `EV_KEY` from `linux/input-event-codes.h`.
pub const EV_KEY: u16 = 1;
/// `KEY_POWER`.
pub const KEY_POWER: u16 = 116;
/// Bytes of an `EV_KEY` capability bitmap (`KEY_MAX` 0x2ff + 1 bits).
pub const KEY_BITS_BYTES: usize = 0x300 / 8;
/// `struct input_event` on a 64-bit kernel: a 16-byte timeval, type, code, value.
pub const EVENT_BYTES: usize = 24;

// EVIOCGBIT(EV_KEY, len) = _IOC(_IOC_READ, 'E', 0x20 + EV_KEY, len); EVIOCGNAME(len) = 0x06.
nix::ioctl_read_buf! {
    /// EVIOCGBIT(EV_KEY): the device's key capability bitmap.
    eviocgbit_key, b'E', 0x21, u8
}
nix::ioctl_read_buf! {
    /// EVIOCGNAME: the device's name.
    eviocgname, b'E', 0x06, u8
}

/// Whether bit `key` is set in an evdev capability bitmap (bytes of little-endian longs, so
/// bit n is byte n/8, bit n%8).
pub fn has_key(bits: &[u8], key: u16) -> bool {
    let k = usize::from(key);
    bits.get(k / 8).is_some_and(|b| b & (1 << (k % 8)) != 0)
}

/// `(type, code, value)` of one `struct input_event`.
pub fn parse_event(ev: &[u8; EVENT_BYTES]) -> (u16, u16, i32) {
    (
        u16::from_ne_bytes([ev[16], ev[17]]),
        u16::from_ne_bytes([ev[18], ev[19]]),
        i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]),
    )
}

/// Whether the event is a press of the power key (not its release or auto-repeat).
pub fn is_power_press(ev: &[u8; EVENT_BYTES]) -> bool {
    parse_event(ev) == (EV_KEY, KEY_POWER, 1)
}

/// Opens `node` (an evdev device) if it reports `KEY_POWER`: the file (non-blocking) and the
/// device's name. `Ok(None)`: no power key.
pub fn open_power_key(node: &Path) -> std::io::Result<Option<(std::fs::File, String)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(node)?;
    let mut bits = [0u8; KEY_BITS_BYTES];
    // SAFETY: the ioctl writes at most bits.len() bytes into the buffer it is given.
    unsafe { eviocgbit_key(f.as_raw_fd(), &mut bits) }.map_err(std::io::Error::from)?;
    if !has_key(&bits, KEY_POWER) {
        return Ok(None);
    }
    let mut name = [0u8; 256];
    // SAFETY: as above, bounded by name.len().
    let name = match unsafe { eviocgname(f.as_raw_fd(), &mut name) } {
        Ok(_) => {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        }
        Err(_) => String::from("?"),
    };
    Ok(Some((f, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits() {
        // The ACPI power button's key bitmap: only KEY_POWER (116 = byte 14, bit 4).
        let mut bits = [0u8; KEY_BITS_BYTES];
        bits[14] = 0x10;
        assert!(has_key(&bits, KEY_POWER));
        assert!(!has_key(&bits, 115));
        assert!(!has_key(&bits, 117));
        // A sleep button (KEY_SLEEP 142) is not a power key.
        let mut sleep = [0u8; KEY_BITS_BYTES];
        sleep[142 / 8] = 1 << (142 % 8);
        assert!(!has_key(&sleep, KEY_POWER));
        assert!(!has_key(&[], KEY_POWER));
    }

    #[test]
    fn events() {
        let mut ev = [0u8; EVENT_BYTES];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev), "a release is no press");
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        ev[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert!(!is_power_press(&ev), "EV_SYN");
    }
}
