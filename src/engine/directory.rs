//! Who and what the engine knows: residents, households, credentials and
//! devices, indexed by dense integers so that rule state can live in vectors.

use crate::alert::{Location, Severity};
use crate::config::{Config, DeviceKind};
use crate::keys::Keys;
use crate::roster::{Resident, Roster};
use crate::time::OptTs;
use rustc_hash::FxHashMap;
use std::collections::HashMap;

/// Undeclared devices are tracked up to this many; events from more are
/// still used for resident rules but not for device rules.
pub const MAX_UNDECLARED_DEVICES: usize = 4096;

/// What the engine keeps of a roster row. Text (ids, places) lives in the
/// directory's [`Keys`]; a 10,000-resident roster costs well under 1 MB.
#[derive(Debug, Clone)]
pub struct ResidentEntry {
    pub household: u32,
    /// The resident's own grid, if the roster names one.
    grid: Sym,
    pub watch: bool,
    /// The resident's own `elderly_inactivity.after`, in milliseconds.
    pub inactivity_after: OptTs,
    pub away_until: OptTs,
}

#[derive(Debug, Clone)]
pub struct HouseholdEntry {
    building: Sym,
    unit: Sym,
    room: Sym,
    /// The grid of the household's first resident.
    grid: Sym,
    /// How many credentials the household has (slots `0..credentials`).
    credentials: u16,
}

/// A credential's holder, household and slot (see [`Directory::credential`]).
#[derive(Debug, Clone, Copy)]
pub struct CredentialEntry {
    pub resident: u32,
    pub household: u32,
    /// Position among the household's credentials.
    pub slot: u16,
}

/// What the directory stores per credential (8 bytes; the household is the
/// holder's).
#[derive(Debug, Clone, Copy)]
struct CredentialHolder {
    resident: u32,
    slot: u16,
}

/// An interned place name (building, unit, room, grid), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Sym(u32);

impl Sym {
    const NONE: Sym = Sym(u32::MAX);
}

#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub id: Box<str>,
    pub kind: DeviceKind,
    pub declared: bool,
    pub perimeter: bool,
    pub heartbeat: bool,
    pub name: Option<String>,
    /// Building, unit and grid from the configuration (the device field of
    /// its location is the id); `None` when none is known, as for every
    /// undeclared device. See [`Directory::device_location`].
    pub place: Option<Box<Location>>,
    /// Floors, rated speed and fault table of a declared elevator.
    pub elevator: Option<Box<ElevatorSpec>>,
}

/// What the configuration says about one elevator (SPEC §3).
#[derive(Debug, Clone, Default)]
pub struct ElevatorSpec {
    pub lowest_floor: Option<i32>,
    pub highest_floor: Option<i32>,
    pub rated_speed: Option<f32>,
    /// Fault table: (fault key, see [`super::parse_fault_key`], severity,
    /// text), sorted by key.
    pub faults: Vec<(u64, Option<Severity>, Box<str>)>,
}

impl ElevatorSpec {
    fn from_config(d: &crate::config::DeviceConfig) -> Option<Box<ElevatorSpec>> {
        if d.kind != DeviceKind::Elevator {
            return None;
        }
        let mut faults: Vec<(u64, Option<Severity>, Box<str>)> = d
            .fault_codes
            .iter()
            .filter_map(|(k, f)| {
                super::parse_fault_key(k).map(|c| (c, f.severity, f.text.as_str().into()))
            })
            .collect();
        faults.sort_by_key(|f| f.0);
        faults.dedup_by_key(|f| f.0);
        Some(Box::new(ElevatorSpec {
            lowest_floor: d.lowest_floor,
            highest_floor: d.highest_floor,
            rated_speed: d.rated_speed.filter(|s| s.is_finite() && *s > 0.0),
            faults,
        }))
    }

    /// The fault table's entry for a fault key.
    pub fn fault(&self, key: u64) -> Option<(Option<Severity>, &str)> {
        self.faults
            .binary_search_by_key(&key, |f| f.0)
            .ok()
            .map(|i| (self.faults[i].1, &*self.faults[i].2))
    }
}

#[derive(Debug, Default)]
pub struct Directory {
    /// Indexed like `resident_ids`.
    pub residents: Vec<ResidentEntry>,
    resident_ids: Keys,
    /// Indexed like `household_keys` (`building-unit-room`).
    households: Vec<HouseholdEntry>,
    household_keys: Keys,
    /// Indexed like `credential_ids`.
    credentials: Vec<CredentialHolder>,
    credential_ids: Keys,
    /// Every household's credentials in slot order, one household after
    /// the other (household `h` starts at `household_first[h]`): one flat
    /// array instead of a small vector per household.
    household_credentials: Vec<u32>,
    household_first: Vec<u32>,
    /// Building, unit, room and grid names.
    places: Keys,
    pub devices: Vec<DeviceEntry>,
    pub device_by_id: FxHashMap<Box<str>, u32>,
    undeclared: usize,
}

/// The roster as the engine keeps it, built row by row (see
/// [`crate::roster::load_each`]) so a large roster is never held twice.
#[derive(Debug, Default)]
pub struct RosterIndex {
    dir: Directory,
    /// (building, grid) -> residents, for the buildings' grids.
    grid_votes: HashMap<(Sym, Sym), usize>,
    key: String,
}

impl RosterIndex {
    /// Adds a roster row; a repeated resident id is ignored (the roster
    /// loader has reported it).
    pub fn add(&mut self, r: &Resident) {
        let dir = &mut self.dir;
        // Ids are dense: the new resident's id is its index in `residents`.
        let (resident, new) = dir.resident_ids.insert(&r.id);
        if !new {
            return;
        }
        let building = dir.place(&r.building);
        let grid = dir.place(r.grid.as_deref().unwrap_or(""));
        if grid != Sym::NONE && building != Sym::NONE {
            *self.grid_votes.entry((building, grid)).or_default() += 1;
        }
        self.key.clear();
        r.write_household(&mut self.key);
        let (household, new) = dir.household_keys.insert(&self.key);
        if new {
            let entry = HouseholdEntry {
                building,
                unit: dir.place(&r.unit),
                room: dir.place(&r.room),
                grid,
                credentials: 0,
            };
            dir.households.push(entry);
        }
        dir.residents.push(ResidentEntry {
            household,
            grid,
            watch: r.watch,
            inactivity_after: r.inactivity_after.into(),
            away_until: r.away_until.into(),
        });
        for c in &r.credentials {
            let (_, new) = dir.credential_ids.insert(c);
            if !new {
                continue; // the first holder keeps it
            }
            let hh = &mut dir.households[household as usize];
            let slot = hh.credentials;
            hh.credentials = hh.credentials.saturating_add(1);
            dir.credentials.push(CredentialHolder { resident, slot });
        }
    }

    pub fn residents(&self) -> usize {
        self.dir.residents.len()
    }
}

impl Directory {
    pub fn new(config: &Config, roster: &Roster) -> Directory {
        let mut index = RosterIndex::default();
        for r in &roster.residents {
            index.add(r);
        }
        Directory::with_roster(config, index)
    }

    /// The directory of `config`'s devices and an indexed roster.
    pub fn with_roster(config: &Config, index: RosterIndex) -> Directory {
        let RosterIndex {
            mut dir,
            grid_votes,
            ..
        } = index;
        // A building's grid is the one most of its residents belong to
        // (ties: the first name in sort order).
        let mut best: HashMap<Sym, (usize, &str)> = HashMap::new();
        for (&(building, grid), &votes) in &grid_votes {
            let name = dir.places.text(grid.0);
            let e = best.entry(building).or_insert((0, name));
            if votes > e.0 || (votes == e.0 && name < e.1) {
                *e = (votes, name);
            }
        }
        for d in &config.devices {
            let building_grid = || {
                let b = dir.places.get(d.building.as_deref()?)?;
                best.get(&Sym(b)).map(|&(_, g)| g.to_string())
            };
            let place = Location {
                building: d.building.clone(),
                unit: d.unit.clone(),
                room: None,
                grid: d.grid.clone().or_else(building_grid),
                device: None,
            };
            let place = (place != Location::default()).then(|| Box::new(place));
            let idx = dir.devices.len() as u32;
            dir.device_by_id.insert(d.id.as_str().into(), idx);
            dir.devices.push(DeviceEntry {
                id: d.id.as_str().into(),
                kind: d.kind,
                declared: true,
                perimeter: d.perimeter,
                heartbeat: d.heartbeat,
                name: d.name.clone(),
                place,
                elevator: ElevatorSpec::from_config(d),
            });
        }
        dir.index_household_credentials();
        for k in [
            &mut dir.resident_ids,
            &mut dir.household_keys,
            &mut dir.credential_ids,
            &mut dir.places,
        ] {
            k.shrink();
        }
        dir.residents.shrink_to_fit();
        dir.households.shrink_to_fit();
        dir.credentials.shrink_to_fit();
        dir
    }

    /// The device's index, registering an undeclared one (up to the cap).
    pub fn device(&mut self, id: &str, kind: DeviceKind) -> Option<u32> {
        if let Some(&i) = self.device_by_id.get(id) {
            return Some(i);
        }
        if self.undeclared >= MAX_UNDECLARED_DEVICES {
            return None;
        }
        self.undeclared += 1;
        let idx = self.devices.len() as u32;
        self.device_by_id.insert(id.into(), idx);
        self.devices.push(DeviceEntry {
            id: id.into(),
            kind,
            declared: false,
            perimeter: false,
            heartbeat: false,
            name: None,
            place: None,
            elevator: None,
        });
        Some(idx)
    }

    /// Where device `d` is, for an alert: its configured place and its id.
    pub fn device_location(&self, d: u32) -> Location {
        let e = &self.devices[d as usize];
        Location {
            device: Some(e.id.to_string()),
            ..e.place.as_deref().cloned().unwrap_or_default()
        }
    }

    fn place(&mut self, name: &str) -> Sym {
        if name.is_empty() {
            Sym::NONE
        } else {
            Sym(self.places.insert(name).0)
        }
    }

    fn place_name(&self, sym: Sym) -> Option<String> {
        (sym != Sym::NONE).then(|| self.places.text(sym.0).to_string())
    }

    pub fn resident(&self, id: &str) -> Option<u32> {
        self.resident_ids.get(id)
    }

    pub fn resident_id(&self, r: u32) -> &str {
        self.resident_ids.text(r)
    }

    /// Where a resident lives (no device).
    pub fn resident_location(&self, r: u32) -> Location {
        let e = &self.residents[r as usize];
        Location {
            grid: self.place_name(e.grid),
            ..self.household_location(e.household)
        }
    }

    pub fn household_count(&self) -> usize {
        self.households.len()
    }

    pub fn household(&self, key: &str) -> Option<u32> {
        self.household_keys.get(key)
    }

    /// `building-unit-room`.
    pub fn household_key(&self, h: u32) -> &str {
        self.household_keys.text(h)
    }

    pub fn household_location(&self, h: u32) -> Location {
        let e = &self.households[h as usize];
        Location {
            building: self.place_name(e.building),
            unit: self.place_name(e.unit),
            room: self.place_name(e.room),
            grid: self.place_name(e.grid),
            device: None,
        }
    }

    /// The household's credential in `slot`.
    pub fn household_credential(&self, h: u32, slot: u16) -> Option<&str> {
        let e = self.households.get(h as usize)?;
        if slot >= e.credentials {
            return None;
        }
        let first = *self.household_first.get(h as usize)? as usize;
        self.household_credentials
            .get(first + slot as usize)
            .map(|&c| self.credential_ids.text(c))
    }

    /// Fills `household_credentials` and `household_first` from the
    /// credentials' (household, slot).
    fn index_household_credentials(&mut self) {
        let mut next = 0u32;
        self.household_first = self
            .households
            .iter()
            .map(|h| {
                let first = next;
                next += u32::from(h.credentials);
                first
            })
            .collect();
        self.household_credentials = vec![0; next as usize];
        for (id, c) in self.credentials.iter().enumerate() {
            // The count saturates at u16::MAX, so credentials from there on
            // (a household with over 65,534 cards) have no slot of their own.
            if c.slot == u16::MAX {
                continue;
            }
            let household = self.residents[c.resident as usize].household;
            let at = self.household_first[household as usize] as usize + c.slot as usize;
            self.household_credentials[at] = id as u32;
        }
    }

    pub fn credential(&self, credential: &str) -> Option<CredentialEntry> {
        let c = self.credentials[self.credential_ids.get(credential)? as usize];
        Some(CredentialEntry {
            resident: c.resident,
            household: self.residents[c.resident as usize].household,
            slot: c.slot,
        })
    }

    pub fn device_name(&self, idx: u32) -> String {
        let d = &self.devices[idx as usize];
        d.name.clone().unwrap_or_else(|| d.id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::roster::parse;
    use crate::time::Calendar;
    use std::path::Path;

    #[test]
    fn household_credentials_in_slot_order_with_interleaved_rows() {
        let cfg = load_str("compound = \"c\"\n", Path::new("t.toml")).unwrap();
        // Households 1-1-101 and 1-1-102 interleaved; X is claimed twice
        // (the first holder keeps it).
        let csv = "resident_id,building,unit,room,credentials\n\
                   A,1,1,101,A1;A2\n\
                   B,1,1,102,B1;X\n\
                   C,1,1,101,C1;X\n";
        let roster = parse(
            csv.as_bytes(),
            Path::new("t.csv"),
            &Calendar::new(cfg.timezone),
        )
        .roster;
        let dir = Directory::new(&cfg, &roster);
        let slots = |key: &str| {
            let h = dir.household(key).unwrap();
            (0..4)
                .map_while(|s| dir.household_credential(h, s))
                .collect::<Vec<_>>()
        };
        assert_eq!(slots("1-1-101"), ["A1", "A2", "C1"]);
        assert_eq!(slots("1-1-102"), ["B1", "X"]);
        let c1 = dir.credential("C1").unwrap();
        assert_eq!(
            (c1.household, c1.slot),
            (dir.household("1-1-101").unwrap(), 2)
        );
    }
}
