//! The E820 memory map the guest kernel receives.

use crate::layout;

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved: the kernel must not use it.
pub const E820_RESERVED: u32 = 2;

/// One E820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The map for `mem_size` bytes of RAM: conventional memory below the EBDA, the BIOS area
/// (where the ACPI tables live) reserved, and RAM from 1 MiB up to the MMIO hole and above 4 GiB.
pub fn memory_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: layout::EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: layout::ACPI_START,
            size: layout::HIGH_MEMORY_START - layout::ACPI_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in layout::ram_ranges(mem_size) {
        let (start, len) = if start == 0 {
            (layout::HIGH_MEMORY_START, len - layout::HIGH_MEMORY_START)
        } else {
            (start, len)
        };
        map.push(E820Entry {
            addr: start,
            size: len,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_has_low_and_high_ram_around_the_bios_area() {
        let map = memory_map(256 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[2].addr, 0x10_0000);
        assert_eq!(map[2].addr + map[2].size, 256 << 20);
        // Only the EBDA and BIOS area are withheld from the guest.
        assert_eq!(ram_total(&map), (256 << 20) - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn large_guest_continues_above_4g_and_entries_are_sorted_and_disjoint() {
        let map = memory_map(6 << 30);
        assert_eq!(map.last().unwrap().addr, 1 << 32);
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
        }
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= (1 << 32) || e.addr >= (1 << 32)));
    }
}
