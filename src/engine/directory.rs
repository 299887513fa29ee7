//! Who and what the engine knows: residents, households, credentials and
//! devices, indexed by dense integers so that rule state can live in vectors.

use crate::alert::{Location, Severity};
use crate::config::{Config, DeviceKind};
use crate::roster::Roster;
use crate::time::{Millis, Ts};
use rustc_hash::FxHashMap;
use std::collections::HashMap;

/// Undeclared devices are tracked up to this many; events from more are
/// still used for resident rules but not for device rules.
pub const MAX_UNDECLARED_DEVICES: usize = 4096;

#[derive(Debug, Clone)]
pub struct ResidentEntry {
    pub id: Box<str>,
    pub watch: bool,
    pub inactivity_after: Option<Millis>,
    pub away_until: Option<Ts>,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub struct HouseholdEntry {
    /// `building-unit-room`.
    pub key: Box<str>,
    pub location: Location,
    /// The household's credentials, in slot order.
    pub credentials: Vec<Box<str>>,
}

#[derive(Debug, Clone, Copy)]
pub struct CredentialEntry {
    pub resident: u32,
    pub household: u32,
    /// Position among the household's credentials.
    pub slot: u16,
}

#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub id: Box<str>,
    pub kind: DeviceKind,
    pub declared: bool,
    pub perimeter: bool,
    pub heartbeat: bool,
    pub name: Option<String>,
    pub location: Location,
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
    pub residents: Vec<ResidentEntry>,
    pub resident_by_id: FxHashMap<Box<str>, u32>,
    pub households: Vec<HouseholdEntry>,
    pub household_by_key: FxHashMap<Box<str>, u32>,
    pub credentials: FxHashMap<Box<str>, CredentialEntry>,
    pub devices: Vec<DeviceEntry>,
    pub device_by_id: FxHashMap<Box<str>, u32>,
    undeclared: usize,
    building_grid: HashMap<String, String>,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Directory {
    pub fn new(config: &Config, roster: &Roster) -> Directory {
        let mut dir = Directory::default();
        let mut grid_votes: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for r in &roster.residents {
            let key = r.household();
            let location = Location {
                building: non_empty(&r.building),
                unit: non_empty(&r.unit),
                room: non_empty(&r.room),
                grid: r.grid.clone(),
                device: None,
            };
            if let Some(g) = &r.grid {
                *grid_votes
                    .entry(r.building.clone())
                    .or_default()
                    .entry(g.clone())
                    .or_default() += 1;
            }
            let household = match dir.household_by_key.get(key.as_str()) {
                Some(&h) => h,
                None => {
                    let h = dir.households.len() as u32;
                    dir.households.push(HouseholdEntry {
                        key: key.clone().into(),
                        location: Location {
                            device: None,
                            ..location.clone()
                        },
                        credentials: Vec::new(),
                    });
                    dir.household_by_key.insert(key.into(), h);
                    h
                }
            };
            if dir.resident_by_id.contains_key(r.id.as_str()) {
                continue; // the roster loader has reported it
            }
            let resident = dir.residents.len() as u32;
            dir.resident_by_id.insert(r.id.as_str().into(), resident);
            dir.residents.push(ResidentEntry {
                id: r.id.as_str().into(),
                watch: r.watch,
                inactivity_after: r.inactivity_after,
                away_until: r.away_until,
                location,
            });
            for c in &r.credentials {
                if dir.credentials.contains_key(c.as_str()) {
                    continue;
                }
                let hh = &mut dir.households[household as usize];
                let slot = hh.credentials.len().min(u16::MAX as usize) as u16;
                hh.credentials.push(c.as_str().into());
                dir.credentials.insert(
                    c.as_str().into(),
                    CredentialEntry {
                        resident,
                        household,
                        slot,
                    },
                );
            }
        }
        // A building's grid is the one most of its residents belong to.
        for (building, votes) in grid_votes {
            if let Some((grid, _)) = votes
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            {
                dir.building_grid.insert(building, grid);
            }
        }
        for d in &config.devices {
            let location = Location {
                building: d.building.clone(),
                unit: d.unit.clone(),
                room: None,
                grid: d.grid.clone().or_else(|| {
                    d.building
                        .as_ref()
                        .and_then(|b| dir.building_grid.get(b).cloned())
                }),
                device: Some(d.id.clone()),
            };
            let idx = dir.devices.len() as u32;
            dir.device_by_id.insert(d.id.as_str().into(), idx);
            dir.devices.push(DeviceEntry {
                id: d.id.as_str().into(),
                kind: d.kind,
                declared: true,
                perimeter: d.perimeter,
                heartbeat: d.heartbeat,
                name: d.name.clone(),
                location,
                elevator: ElevatorSpec::from_config(d),
            });
        }
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
            location: Location {
                device: Some(id.to_string()),
                ..Location::default()
            },
            elevator: None,
        });
        Some(idx)
    }

    pub fn device_name(&self, idx: u32) -> String {
        let d = &self.devices[idx as usize];
        d.name.clone().unwrap_or_else(|| d.id.to_string())
    }
}
