//! Legacy PC platform devices on the port-I/O bus: the 8250 UART, the RTC/CMOS,
//! the i8042 reset line, hardware-reduced ACPI power management and pvpanic.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
