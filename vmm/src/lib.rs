//! legovmm: the KVM virtual machine monitor of LegoVMM. It boots a stock Linux kernel as a
//! vNode, with devices a stock kernel finds by itself (ACPI-described virtio-mmio, an 8250
//! serial port, pvpanic, hardware-reduced ACPI power management).
//!
//! The path from `legovmm run` to a running guest: [`config`] merges the TOML file and the
//! flags; [`vm::run`] opens [`kvm`], creates guest RAM ([`memory`]), the devices
//! ([`device_manager`]), the ACPI tables ([`acpi`]), loads the kernel ([`boot`]), configures
//! the vCPUs ([`cpu`]) and runs them until the guest ends; [`api`] answers an operator's
//! requests on the API socket meanwhile, adding and removing devices through [`hotplug`];
//! [`console_input`] types into the serial console and [`events`] logs the vNode's lifecycle.

pub mod acpi;
pub mod announce;
pub mod api;
pub mod backends;
pub mod background;
pub mod boot;
pub mod claim;
pub mod config;
pub mod console;
pub mod console_input;
pub mod cpu;
pub mod device_manager;
pub mod events;
pub mod hotplug;
pub mod kick;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod network;
pub mod paging;
pub mod supervisor;
pub mod vm;
