//! Register maps at run time: the reads a poll makes (coalesced), and the
//! decoding of what they return into an [`ElevatorSample`].
//!
//! A map is compiled once per device from its (checked) configuration. A
//! poll fills one register buffer and one bit buffer, both allocated at
//! compile time, and [`RegisterMap::decode`] reads the points from them.

use crate::config::modbus::{
    merged_ranges, parse_raw_key, parse_target, ElevatorField, Literal, PointConfig, PointType,
    ReadableRanges, RegisterTable, Target, WordOrder,
};
use crate::event::{CarDoor, ElevatorSample, TravelDirection};
use std::collections::BTreeMap;

/// One read request of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub table: RegisterTable,
    pub start: u16,
    pub count: u16,
    /// Where its data goes in the register (or, for coils and discrete
    /// inputs, the bit) buffer.
    pub(crate) offset: usize,
}

/// Coalesces the spans `(start, length)` a map needs into the fewest reads
/// `(start, count)`, in address order, such that
///
/// - every span lies whole in one read (a 32-bit value is never split);
/// - a read is at most `max_count` long (125 registers, 2000 bits);
/// - a read skips at most `max_gap` unneeded addresses in a row;
/// - when `readable` (inclusive ranges) is not empty, a read lies within
///   one readable range: it never spans an address the device refuses.
///
/// Greedy extension is optimal here: whether a run of consecutive spans fits
/// one read only gets easier for a shorter run. Spans that lie outside every
/// readable range (which `check` reports) are read on their own.
pub fn coalesce(
    spans: &[(u16, u16)],
    readable: &[(u32, u32)],
    max_gap: u16,
    max_count: u16,
) -> Vec<(u16, u16)> {
    // Spans as half-open [start, end), sorted; overlapping ones merged into
    // units that must not be split.
    let mut units: Vec<(u32, u32)> = spans
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(s, len)| (u32::from(s), u32::from(s) + u32::from(len)))
        .collect();
    units.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(units.len());
    for (s, e) in units {
        match merged.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let range_end = |start: u32| -> Option<u32> {
        if readable.is_empty() {
            return Some(u32::MAX);
        }
        readable
            .iter()
            .find(|&&(lo, hi)| lo <= start && start <= hi)
            .map(|&(_, hi)| hi)
    };
    let mut reads: Vec<(u32, u32)> = Vec::with_capacity(merged.len());
    for (s, e) in merged {
        if let Some(cur) = reads.last_mut() {
            let gap_ok = s - cur.1 <= u32::from(max_gap);
            let len_ok = e - cur.0 <= u32::from(max_count);
            let range_ok = range_end(cur.0).is_some_and(|hi| e - 1 <= hi);
            if gap_ok && len_ok && range_ok {
                cur.1 = e;
                continue;
            }
        }
        reads.push((s, e));
    }
    reads
        .into_iter()
        .map(|(s, e)| (s as u16, (e - s).min(u32::from(u16::MAX)) as u16))
        .collect()
}

/// Where a point's raw value comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Fixed(Target),
    /// A coil or discrete input: index in the bit buffer.
    Coil(usize),
    /// A register (pair): index in the register buffer.
    Reg {
        idx: usize,
        kind: PointType,
        bit: u8,
        up: u8,
        down: u8,
        order: WordOrder,
    },
}

#[derive(Debug, Clone)]
struct Point {
    field: ElevatorField,
    source: Source,
    scale: Option<f64>,
    offset: Option<f64>,
    invert: bool,
    /// Sorted by raw value.
    values: Vec<(i64, Target)>,
    default: Option<Target>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    Int(i64),
    Float(f64),
    Dir(TravelDirection),
}

/// A compiled register map.
#[derive(Debug, Clone)]
pub struct RegisterMap {
    blocks: Vec<Block>,
    points: Vec<Point>,
    regs_len: usize,
    bits_len: usize,
}

impl RegisterMap {
    /// Compiles a checked map. Errors only for what `check` reports.
    pub fn compile(
        readable: &ReadableRanges,
        points: &[PointConfig],
        max_gap: u16,
    ) -> Result<RegisterMap, String> {
        // Spans per table.
        let mut spans: BTreeMap<RegisterTable, Vec<(u16, u16)>> = BTreeMap::new();
        for (i, p) in points.iter().enumerate() {
            if p.value.is_some() {
                continue;
            }
            let t = p.effective_type();
            let addr = p
                .address
                .ok_or_else(|| format!("points[{i}] has no address"))?;
            let len = t.registers();
            if addr + len - 1 > 65535 {
                return Err(format!("points[{i}]: address {addr} out of range"));
            }
            spans
                .entry(p.table)
                .or_default()
                .push((addr as u16, len as u16));
        }
        let mut blocks = Vec::new();
        let (mut regs_len, mut bits_len) = (0usize, 0usize);
        for (table, sp) in &spans {
            let ranges = readable
                .get(table)
                .map(|r| merged_ranges(r))
                .unwrap_or_default();
            for (start, count) in coalesce(sp, &ranges, max_gap, table.max_per_request()) {
                let len = if table.is_bits() {
                    &mut bits_len
                } else {
                    &mut regs_len
                };
                blocks.push(Block {
                    table: *table,
                    start,
                    count,
                    offset: *len,
                });
                *len += usize::from(count);
            }
        }
        let locate = |table: RegisterTable, addr: u32, len: u32| -> Option<usize> {
            blocks
                .iter()
                .find(|b| {
                    b.table == table
                        && u32::from(b.start) <= addr
                        && addr + len <= u32::from(b.start) + u32::from(b.count)
                })
                .map(|b| b.offset + (addr - u32::from(b.start)) as usize)
        };
        let mut compiled = Vec::with_capacity(points.len());
        for (i, p) in points.iter().enumerate() {
            let field = p.field.ok_or_else(|| format!("points[{i}] has no field"))?;
            let target =
                |l: &Literal| parse_target(field, l).map_err(|e| format!("points[{i}]: {e}"));
            let source = if let Some(v) = &p.value {
                Source::Fixed(target(v)?)
            } else {
                let t = p.effective_type();
                let addr = p.address.unwrap_or(0);
                let idx = locate(p.table, addr, t.registers())
                    .ok_or_else(|| format!("points[{i}] is in no read"))?;
                if p.table.is_bits() {
                    Source::Coil(idx)
                } else {
                    let bit = |b: Option<u32>| -> Result<u8, String> {
                        match b {
                            Some(b) if b < 16 => Ok(b as u8),
                            None if !matches!(t, PointType::Bit | PointType::UpDown) => Ok(0),
                            _ => Err(format!("points[{i}]: bad bit")),
                        }
                    };
                    Source::Reg {
                        idx,
                        kind: t,
                        bit: if t == PointType::Bit { bit(p.bit)? } else { 0 },
                        up: if t == PointType::UpDown {
                            bit(p.up_bit)?
                        } else {
                            0
                        },
                        down: if t == PointType::UpDown {
                            bit(p.down_bit)?
                        } else {
                            0
                        },
                        order: p.order.unwrap_or_default(),
                    }
                }
            };
            let mut values = Vec::with_capacity(p.values.len());
            for (k, v) in &p.values {
                let raw = parse_raw_key(k).ok_or_else(|| format!("points[{i}]: bad key {k}"))?;
                values.push((raw, target(v)?));
            }
            values.sort_by_key(|(k, _)| *k);
            let default = p.default.as_ref().map(target).transpose()?;
            compiled.push(Point {
                field,
                source,
                scale: p.scale,
                offset: p.offset,
                invert: p.invert,
                values,
                default,
            });
        }
        Ok(RegisterMap {
            blocks,
            points: compiled,
            regs_len,
            bits_len,
        })
    }

    /// The reads of one poll, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Length of the register buffer a poll fills.
    pub fn regs_len(&self) -> usize {
        self.regs_len
    }

    /// Length of the bit buffer a poll fills.
    pub fn bits_len(&self) -> usize {
        self.bits_len
    }

    /// Decodes a sample from filled buffers. Raw values a `values` table
    /// does not list (and no `default` covers), NaN floats and the like
    /// leave their field out; they are counted in `unmapped`.
    pub fn decode(&self, regs: &[u16], bits: &[bool], unmapped: &mut u64) -> ElevatorSample {
        let mut s = ElevatorSample::default();
        for p in &self.points {
            let value = match p.source {
                Source::Fixed(t) => Some(t),
                _ => p.read(regs, bits).and_then(|raw| p.target(raw)),
            };
            match value {
                Some(t) => p.apply(t, &mut s),
                None => *unmapped += 1,
            }
        }
        s
    }
}

impl Point {
    fn read(&self, regs: &[u16], bits: &[bool]) -> Option<Raw> {
        let flag = |on: bool| Some(Raw::Int(i64::from(on != self.invert)));
        match self.source {
            Source::Fixed(_) => None,
            Source::Coil(i) => flag(*bits.get(i)?),
            Source::Reg {
                idx,
                kind,
                bit,
                up,
                down,
                order,
            } => {
                let r = *regs.get(idx)?;
                match kind {
                    PointType::Bool => flag(r != 0),
                    PointType::Bit => flag(r >> bit & 1 == 1),
                    PointType::UpDown => match (r >> up & 1 == 1, r >> down & 1 == 1) {
                        (true, false) => Some(Raw::Dir(TravelDirection::Up)),
                        (false, true) => Some(Raw::Dir(TravelDirection::Down)),
                        (false, false) => Some(Raw::Dir(TravelDirection::None)),
                        // Both: the box contradicts itself; keep the last value.
                        (true, true) => None,
                    },
                    PointType::U16 => Some(Raw::Int(i64::from(r))),
                    PointType::I16 => Some(Raw::Int(i64::from(r as i16))),
                    PointType::U8High => Some(Raw::Int(i64::from(r >> 8))),
                    PointType::U8Low => Some(Raw::Int(i64::from(r & 0xFF))),
                    PointType::I8High => Some(Raw::Int(i64::from((r >> 8) as u8 as i8))),
                    PointType::I8Low => Some(Raw::Int(i64::from(r as u8 as i8))),
                    PointType::U32 | PointType::I32 | PointType::F32 => {
                        let v = word32(r, *regs.get(idx + 1)?, order);
                        match kind {
                            PointType::U32 => Some(Raw::Int(i64::from(v))),
                            PointType::I32 => Some(Raw::Int(i64::from(v as i32))),
                            _ => {
                                let x = f32::from_bits(v);
                                x.is_finite().then_some(Raw::Float(f64::from(x)))
                            }
                        }
                    }
                }
            }
        }
    }

    /// The canonical value of a raw one, for this point's field.
    fn target(&self, raw: Raw) -> Option<Target> {
        if !self.values.is_empty() {
            let Raw::Int(n) = raw else {
                return self.default;
            };
            return match self.values.binary_search_by_key(&n, |(k, _)| *k) {
                Ok(i) => Some(self.values[i].1),
                Err(_) => self.default,
            };
        }
        let num = match raw {
            Raw::Int(n) => n as f64,
            Raw::Float(x) => x,
            Raw::Dir(d) => return Some(Target::Direction(d)),
        };
        use ElevatorField as F;
        match self.field {
            f if f.is_flag() => Some(Target::Bool(num != 0.0)),
            F::Door => Some(Target::Door(if num != 0.0 {
                CarDoor::Open
            } else {
                CarDoor::Closed
            })),
            F::Floor | F::Speed => {
                if self.scale.is_none() && self.offset.is_none() {
                    return Some(match raw {
                        Raw::Int(n) if self.field == F::Floor => Target::Int(n),
                        _ => Target::Float(num),
                    });
                }
                let v = num * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0);
                Some(Target::Float(v))
            }
            F::FaultCode | F::FaultBits => match raw {
                Raw::Int(n) if n >= 0 => Some(Target::Int(n)),
                _ => None,
            },
            // Direction and mode without a table: not reachable after check.
            _ => None,
        }
    }

    fn apply(&self, t: Target, s: &mut ElevatorSample) {
        use ElevatorField as F;
        let int = |t: Target| -> Option<i64> {
            match t {
                Target::Int(n) => Some(n),
                Target::Float(x) if x.is_finite() => Some(x.round() as i64),
                _ => None,
            }
        };
        match (self.field, t) {
            (F::Floor, t) => s.floor = int(t).and_then(|n| i32::try_from(n).ok()),
            (F::Speed, Target::Float(x)) => s.speed = Some(x as f32),
            (F::Speed, Target::Int(n)) => s.speed = Some(n as f32),
            (F::FaultCode, t) => s.fault_code = int(t).and_then(|n| u32::try_from(n).ok()),
            (F::FaultBits, t) => s.fault_bits = int(t).and_then(|n| u32::try_from(n).ok()),
            (F::Direction, Target::Direction(d)) => s.direction = Some(d),
            (F::Door, Target::Door(d)) => s.door = Some(d),
            (F::Mode, Target::Mode(m)) => s.mode = Some(m),
            (f, Target::Bool(b)) => {
                let slot = match f {
                    F::Moving => &mut s.moving,
                    F::DoorZone => &mut s.door_zone,
                    F::Occupied => &mut s.occupied,
                    F::AlarmButton => &mut s.alarm_button,
                    _ => return,
                };
                *slot = Some(slot.unwrap_or(false) || b);
            }
            _ => {}
        }
    }
}

/// A 32-bit value from two registers in `order` (A = most significant byte).
pub fn word32(first: u16, second: u16, order: WordOrder) -> u32 {
    let [b0, b1] = first.to_be_bytes();
    let [b2, b3] = second.to_be_bytes();
    u32::from_be_bytes(match order {
        WordOrder::Abcd => [b0, b1, b2, b3],
        WordOrder::Cdab => [b2, b3, b0, b1],
        WordOrder::Badc => [b1, b0, b3, b2],
        WordOrder::Dcba => [b3, b2, b1, b0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::modbus::builtin_profile;

    #[test]
    fn coalesces_within_gap_length_and_readable_ranges() {
        // The monitor box: 0, 1, 2 and a threshold at 17; 13-15 unreadable.
        let box_ranges = [(0, 12), (16, 18)];
        assert_eq!(
            coalesce(&[(0, 1), (1, 1), (2, 1), (17, 1)], &box_ranges, 20, 125),
            [(0, 3), (17, 1)],
            "never spans 13-15 even though the gap would allow it"
        );
        // Without readable ranges the same gap merges them.
        assert_eq!(
            coalesce(&[(0, 1), (1, 1), (2, 1), (17, 1)], &[], 20, 125),
            [(0, 18)]
        );
        // The gap limit: 8 unneeded registers are read, 9 are not.
        assert_eq!(coalesce(&[(0, 1), (9, 1)], &[], 8, 125), [(0, 10)]);
        assert_eq!(coalesce(&[(0, 1), (10, 1)], &[], 8, 125), [(0, 1), (10, 1)]);
        // Unsorted input, duplicates, overlapping 32-bit values.
        assert_eq!(
            coalesce(&[(5, 2), (1, 1), (1, 1), (6, 1), (3, 2)], &[], 0, 125),
            [(1, 1), (3, 4)]
        );
        // The 125-register limit, never splitting a 32-bit value.
        let spans: Vec<(u16, u16)> = (0..70).map(|i| (i * 2, 2)).collect();
        assert_eq!(coalesce(&spans, &[], 8, 125), [(0, 124), (124, 16)]);
        // 2000 bits for coils.
        let coils: Vec<(u16, u16)> = (0..2100).map(|i| (i, 1)).collect();
        assert_eq!(coalesce(&coils, &[], 8, 2000), [(0, 2000), (2000, 100)]);
        // A span outside every readable range is read alone.
        assert_eq!(
            coalesce(&[(0, 1), (14, 1), (16, 1)], &box_ranges, 20, 125),
            [(0, 1), (14, 1), (16, 1)]
        );
        // Up to the last address.
        assert_eq!(coalesce(&[(65534, 2)], &[], 8, 125), [(65534, 2)]);
        assert!(coalesce(&[], &[], 8, 125).is_empty());
    }

    #[test]
    fn coalescing_is_minimal_on_random_inputs() {
        // Compare with an exhaustive dynamic programme on small inputs.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2000 {
            let n = 1 + rnd(8) as usize;
            let spans: Vec<(u16, u16)> = (0..n)
                .map(|_| (rnd(40) as u16, 1 + rnd(2) as u16))
                .collect();
            let gap = rnd(6) as u16;
            let max = 2 + rnd(12) as u16;
            let ranges: Vec<(u32, u32)> = if rnd(2) == 0 {
                Vec::new()
            } else {
                vec![(0, 20), (23, 60)]
            };
            let reads = coalesce(&spans, &ranges, gap, max);
            // The units that must not be split.
            let mut u: Vec<(u32, u32)> = spans
                .iter()
                .map(|&(s, l)| (u32::from(s), u32::from(s + l)))
                .collect();
            u.sort_unstable();
            let mut m: Vec<(u32, u32)> = Vec::new();
            for (s, e) in u {
                match m.last_mut() {
                    Some(x) if s < x.1 => x.1 = x.1.max(e),
                    _ => m.push((s, e)),
                }
            }
            // Every span whole in one read; reads within limits.
            for &(s, l) in &spans {
                assert!(
                    reads.iter().any(|&(rs, rc)| rs <= s && s + l <= rs + rc),
                    "{spans:?} {reads:?}"
                );
            }
            for &(rs, rc) in &reads {
                let (rs, re) = (u32::from(rs), u32::from(rs) + u32::from(rc));
                let inside =
                    ranges.is_empty() || ranges.iter().any(|&(lo, hi)| lo <= rs && re - 1 <= hi);
                let alone = m.contains(&(rs, re));
                assert!(inside || alone, "{reads:?} crosses {ranges:?}");
                assert!(re - rs <= u32::from(max) || alone, "{reads:?}");
            }
            // Minimal: a dynamic programme over the units.
            let fits = |i: usize, j: usize| -> bool {
                if i == j {
                    return true;
                }
                let ok_gaps = (i..j).all(|k| m[k + 1].0 - m[k].1 <= u32::from(gap));
                let ok_len = m[j].1 - m[i].0 <= u32::from(max);
                let ok_range = ranges.is_empty()
                    || ranges
                        .iter()
                        .any(|&(lo, hi)| lo <= m[i].0 && m[j].1 - 1 <= hi);
                ok_gaps && ok_len && ok_range
            };
            let mut best = vec![usize::MAX; m.len() + 1];
            best[0] = 0;
            for j in 0..m.len() {
                for i in 0..=j {
                    if best[i] != usize::MAX && fits(i, j) {
                        best[j + 1] = best[j + 1].min(best[i] + 1);
                    }
                }
            }
            assert_eq!(reads.len(), best[m.len()], "{spans:?} g{gap} m{max}");
        }
    }

    #[test]
    fn word_orders() {
        // 0x11223344 laid out four ways.
        assert_eq!(word32(0x1122, 0x3344, WordOrder::Abcd), 0x1122_3344);
        assert_eq!(word32(0x3344, 0x1122, WordOrder::Cdab), 0x1122_3344);
        assert_eq!(word32(0x2211, 0x4433, WordOrder::Badc), 0x1122_3344);
        assert_eq!(word32(0x4433, 0x2211, WordOrder::Dcba), 0x1122_3344);
    }

    fn box_map() -> RegisterMap {
        let p = builtin_profile("monitor-box").unwrap();
        RegisterMap::compile(&p.readable, &p.points, 8).unwrap()
    }

    #[test]
    fn monitor_box_reads_once_and_decodes() {
        let m = box_map();
        assert_eq!(
            m.blocks(),
            [Block {
                table: RegisterTable::Holding,
                start: 0,
                count: 3,
                offset: 0
            }]
        );
        let mut unmapped = 0;
        // Moving down at B2, 1.2 m/s, door closed, out of zone, occupied, faults 0 and 6.
        let regs = [
            0b100_0001,
            (1 << 9) | (1 << 12) | 0x5A,
            ((-2i8 as u8 as u16) << 8) | 12,
        ];
        let s = m.decode(&regs, &[], &mut unmapped);
        assert_eq!(unmapped, 0);
        assert_eq!(s.floor, Some(-2));
        assert_eq!(s.moving, Some(true));
        assert_eq!(s.direction, Some(TravelDirection::Down));
        assert_eq!(s.door, Some(CarDoor::Closed));
        assert_eq!(s.door_zone, Some(false));
        assert_eq!(s.occupied, Some(true));
        assert_eq!(s.speed, Some(1.2));
        assert_eq!(s.fault_bits, Some(0b100_0001));
        assert_eq!((s.mode, s.fault_code, s.alarm_button), (None, None, None));
        // Standing at 18 in the zone, door open, empty.
        let s = m.decode(&[0, (1 << 10) | (1 << 11), 18 << 8], &[], &mut unmapped);
        assert_eq!(s.floor, Some(18));
        assert_eq!(s.moving, Some(false));
        assert_eq!(s.direction, Some(TravelDirection::None));
        assert_eq!(s.door, Some(CarDoor::Open));
        assert_eq!(s.door_zone, Some(true));
        assert_eq!(s.occupied, Some(false));
        assert_eq!(s.speed, Some(0.0));
        // Both direction bits: the direction is left out (counted), moving is set.
        let s = m.decode(&[0, 3 << 8, 0], &[], &mut unmapped);
        assert_eq!((s.direction, s.moving, unmapped), (None, Some(true), 1));
    }

    #[test]
    fn value_tables_scales_and_32_bit_types() {
        let text = r#"
            readable = { input = [[100, 120]] }
            points = [
              { field = "mode", table = "input", address = 100, values = { "0" = "normal", "1" = "inspection", "0x10" = "fire" }, default = "other" },
              { field = "floor", table = "input", address = 101, type = "i32", order = "CDAB" },
              { field = "speed", table = "input", address = 103, type = "f32", order = "DCBA" },
              { field = "fault_code", table = "input", address = 105, type = "u32", order = "BADC" },
              { field = "door", table = "input", address = 107, values = { "0" = "closed", "1" = "opening", "2" = "open", "3" = "closing" } },
              { field = "alarm_button", table = "coil", address = 3 },
              { field = "occupied", table = "discrete", address = 0, invert = true },
              { field = "floor", value = 0 },
              { field = "direction", table = "input", address = 108, type = "i16", values = { "1" = "up", "-1" = "down", "0" = "none" } },
              { field = "speed", table = "input", address = 109, scale = 0.01, offset = -1.0 },
            ]
        "#;
        // (Two floor/speed points are a check error; compile takes the last.)
        let p: crate::config::modbus::ProfileConfig = toml::from_str(text).unwrap();
        let m = RegisterMap::compile(&p.readable, &p.points, 8).unwrap();
        let tables: Vec<(RegisterTable, u16, u16)> = m
            .blocks()
            .iter()
            .map(|b| (b.table, b.start, b.count))
            .collect();
        assert_eq!(
            tables,
            [
                (RegisterTable::Coil, 3, 1),
                (RegisterTable::Discrete, 0, 1),
                (RegisterTable::Input, 100, 10)
            ]
        );
        let f = 2.5f32.to_bits().to_be_bytes();
        let mut regs = [0u16; 10];
        regs[0] = 0x10;
        regs[1] = (-3i32 as u32 & 0xFFFF) as u16;
        regs[2] = (-3i32 as u32 >> 16) as u16;
        regs[3] = u16::from_be_bytes([f[3], f[2]]);
        regs[4] = u16::from_be_bytes([f[1], f[0]]);
        regs[5] = 0x3412; // 0x12345678 in BADC
        regs[6] = 0x7856;
        regs[7] = 3;
        regs[8] = (-1i16) as u16;
        regs[9] = 250;
        let mut unmapped = 0;
        let s = m.decode(&regs, &[true, true], &mut unmapped);
        assert_eq!(unmapped, 0);
        assert_eq!(s.mode, Some(crate::event::ElevatorMode::Fire));
        assert_eq!(s.floor, Some(0), "the fixed value comes last");
        assert_eq!(s.speed, Some(1.5), "250 × 0.01 - 1");
        assert_eq!(s.fault_code, Some(0x1234_5678));
        assert_eq!(s.door, Some(CarDoor::Closing));
        assert_eq!(s.alarm_button, Some(true));
        assert_eq!(s.occupied, Some(false), "inverted");
        assert_eq!(s.direction, Some(TravelDirection::Down));
        regs[0] = 7; // not listed: the default
        regs[7] = 9; // not listed, no default: left out
        let s = m.decode(&regs, &[false, false], &mut unmapped);
        assert_eq!(s.mode, Some(crate::event::ElevatorMode::Other));
        assert_eq!(s.door, None);
        assert_eq!(unmapped, 1);
        assert_eq!(s.occupied, Some(true));
    }
}
