//! A minimal MC146818 RTC/CMOS at ports 0x70 (index) and 0x71 (data).
//!
//! It answers the current UTC time in BCD with the update-in-progress bit always
//! clear, so the guest's RTC probe costs a handful of port accesses. Status register
//! B reports 24-hour BCD mode and D reports valid RAM and time; every other
//! register reads as zero and writes are ignored.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// The index port; the data port follows it.
pub const PORT: u16 = 0x70;
/// The number of ports the device decodes.
pub const LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) always clear.
const STATUS_A: u8 = 0x26;
/// Status B: 24-hour mode (bit 1); bit 2 (binary) clear, so values are BCD.
const STATUS_B: u8 = 0x02;
/// Status D: valid RAM and time (bit 7).
const STATUS_D: u8 = 0x80;

/// A broken-down UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: u32,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of month, 1..=31.
    pub day: u32,
    /// Day of week, 1 (Sunday) ..= 7 (Saturday), as the RTC counts.
    pub weekday: u32,
    /// Hour, 0..=23.
    pub hour: u32,
    /// Minute, 0..=59.
    pub minute: u32,
    /// Second, 0..=59.
    pub second: u32,
}

impl DateTime {
    /// Converts seconds since the Unix epoch to a UTC date and time.
    pub fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil-from-days over 400-year eras (proleptic Gregorian calendar).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year: year as u32,
            month: month as u32,
            day: day as u32,
            // 1970-01-01 was a Thursday (RTC weekday 5).
            weekday: ((days + 4) % 7) as u32 + 1,
            hour: (rem / 3_600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// The current UTC time (the epoch if the host clock is before 1970).
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::from_unix(secs)
    }
}

/// Encodes `v % 100` as two BCD digits.
pub fn to_bcd(v: u32) -> u8 {
    let v = v % 100;
    (((v / 10) << 4) | (v % 10)) as u8
}

/// The RTC/CMOS device.
#[derive(Debug, Default)]
pub struct Cmos {
    index: u8,
}

impl Cmos {
    /// Creates the device.
    pub fn new() -> Self {
        Self::default()
    }

    fn register(&self, index: u8) -> u8 {
        let time_reg = matches!(
            index,
            REG_SECONDS
                | REG_MINUTES
                | REG_HOURS
                | REG_WEEKDAY
                | REG_DAY
                | REG_MONTH
                | REG_YEAR
                | REG_CENTURY
        );
        if time_reg {
            let t = DateTime::now();
            return match index {
                REG_SECONDS => to_bcd(t.second),
                REG_MINUTES => to_bcd(t.minute),
                REG_HOURS => to_bcd(t.hour),
                REG_WEEKDAY => to_bcd(t.weekday),
                REG_DAY => to_bcd(t.day),
                REG_MONTH => to_bcd(t.month),
                REG_YEAR => to_bcd(t.year),
                _ => to_bcd(t.year / 100),
            };
        }
        match index {
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_D => STATUS_D,
            _ => 0,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 1 {
            return;
        }
        data[0] = match offset {
            0 => self.index,
            1 => self.register(self.index),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Bit 7 of the index is the NMI mask; it selects no register.
        if offset == 0 && data.len() == 1 {
            self.index = data[0] & 0x7f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_reg(dev: &mut Cmos, index: u8) -> u8 {
        dev.write(0, &[index | 0x80]);
        let mut b = [0xaa];
        dev.read(1, &mut b);
        b[0]
    }

    fn from_bcd(v: u8) -> u32 {
        assert!(v & 0x0f < 10 && v >> 4 < 10, "{v:#x} is not BCD");
        u32::from(v >> 4) * 10 + u32::from(v & 0x0f)
    }

    #[test]
    fn converts_known_instants() {
        assert_eq!(
            DateTime::from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 5,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2024-02-29 13:45:07 UTC, a Thursday.
        assert_eq!(
            DateTime::from_unix(1_709_214_307),
            DateTime {
                year: 2024,
                month: 2,
                day: 29,
                weekday: 5,
                hour: 13,
                minute: 45,
                second: 7
            }
        );
        // 2000-03-01 00:00:00 UTC, a Wednesday.
        let t = DateTime::from_unix(951_868_800);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2000, 3, 1, 4));
        assert_eq!(to_bcd(59), 0x59);
        assert_eq!(to_bcd(2026), 0x26);
    }

    #[test]
    fn reports_current_time_in_bcd_and_fixed_status() {
        let mut dev = Cmos::new();
        let before = DateTime::now();
        let year = from_bcd(read_reg(&mut dev, REG_CENTURY)) * 100
            + from_bcd(read_reg(&mut dev, REG_YEAR));
        let month = from_bcd(read_reg(&mut dev, REG_MONTH));
        let day = from_bcd(read_reg(&mut dev, REG_DAY));
        let hour = from_bcd(read_reg(&mut dev, REG_HOURS));
        let minute = from_bcd(read_reg(&mut dev, REG_MINUTES));
        let second = from_bcd(read_reg(&mut dev, REG_SECONDS));
        assert!(year >= 2024 && (before.year..=before.year + 1).contains(&year));
        assert!((1..=12).contains(&month) && (1..=31).contains(&day));
        assert!(hour < 24 && minute < 60 && second < 60);
        let weekday = from_bcd(read_reg(&mut dev, REG_WEEKDAY));
        assert!((1..=7).contains(&weekday));

        assert_eq!(read_reg(&mut dev, REG_STATUS_A) & 0x80, 0, "UIP clear");
        assert_eq!(read_reg(&mut dev, REG_STATUS_B), 0x02);
        assert_eq!(read_reg(&mut dev, REG_STATUS_D), 0x80);
        assert_eq!(read_reg(&mut dev, 0x0c), 0);
        assert_eq!(read_reg(&mut dev, 0x10), 0);
    }
}
