//! The 8250 UART at COM1 (port 0x3f8, IRQ 4), backed by `vm_superio::Serial`.
//!
//! Guest output goes to a `Box<dyn Write + Send>`; guest input is queued with
//! [`SerialDevice::enqueue_input`]. The interrupt is an [`EventFd`] that the VMM
//! registers as a KVM irqfd on [`IRQ`].

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// The I/O port of COM1.
pub const PORT: u16 = 0x3f8;
/// The number of ports the UART decodes.
pub const LEN: u64 = 8;
/// The ISA interrupt line of COM1.
pub const IRQ: u32 = 4;

/// Errors from the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The interrupt eventfd could not be created.
    #[error("could not create the serial interrupt eventfd")]
    EventFd(#[source] io::Error),
    /// The guest's receive FIFO has no room for more input.
    #[error("the serial receive FIFO is full")]
    FifoFull,
    /// Raising the interrupt failed.
    #[error("could not raise the serial interrupt")]
    Interrupt(#[source] io::Error),
}

/// An interrupt line implemented by writing to an eventfd (a KVM irqfd).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `event`.
    pub fn new(event: EventFd) -> Self {
        Self(event)
    }

    /// The underlying eventfd.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The COM1 UART as a bus device.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// Creates a UART whose transmitted bytes are written to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Result<Self, SerialError> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        Ok(Self {
            inner: Serial::new(EventFdTrigger::new(event), out),
        })
    }

    /// The interrupt eventfd, to register as an irqfd on [`IRQ`].
    pub fn interrupt_event(&self) -> &EventFd {
        self.inner.interrupt_evt().event()
    }

    /// Queues bytes for the guest to read; returns how many fit in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        self.inner.enqueue_raw_bytes(input).map_err(|e| match e {
            vm_superio::serial::Error::FullFifo => SerialError::FifoFull,
            vm_superio::serial::Error::Trigger(e) | vm_superio::serial::Error::IOError(e) => {
                SerialError::Interrupt(e)
            }
        })
    }

    /// How many more input bytes the receive FIFO can take.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < LEN {
            data[0] = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= LEN {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            tracing::debug!("serial write failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_output_and_receives_input() {
        let cap = Capture::default();
        let mut dev = SerialDevice::new(Box::new(cap.clone())).unwrap();
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&*cap.0.lock().unwrap(), b"hi");

        // Enable the received-data interrupt (IER bit 0), then queue input.
        dev.write(1, &[0x01]);
        assert_eq!(dev.enqueue_input(b"x").unwrap(), 1);
        assert!(dev.interrupt_event().read().unwrap() >= 1);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn ignores_wide_and_out_of_range_accesses() {
        let cap = Capture::default();
        let mut dev = SerialDevice::new(Box::new(cap.clone())).unwrap();
        dev.write(0, b"ab");
        dev.write(9, b"c");
        let mut wide = [0xffu8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0, 0]);
        assert!(cap.0.lock().unwrap().is_empty());
    }
}
