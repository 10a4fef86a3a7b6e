//! A simulated disk under `RedbKv`, through redb's `StorageBackend`.
//!
//! What was written since the last `sync_data` is kept apart from what is durable, as a
//! disk's volatile cache holds it: a power loss ([`SimDisk::power_loss`]) drops all of it,
//! or keeps a prefix of it (the disk wrote some back on its own), or keeps a prefix and tears
//! the next write (a page half old, half new). Faults can be switched on ([`DiskFaults`]):
//! every write or sync fails with EIO, or writes fail with ENOSPC; a failed sync makes
//! nothing durable. The store must fail closed (acknowledge nothing that was not synced)
//! and recover when reopened.

use rand::Rng;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Which I/O fails, while switched on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// Writes fail with EIO.
    pub write_eio: bool,
    /// Writes fail with ENOSPC.
    pub write_enospc: bool,
    /// Syncs fail with EIO (and make nothing durable).
    pub sync_eio: bool,
}

/// What a power loss keeps of the writes not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Nothing: the disk holds exactly what was last synced.
    DropAll,
    /// The first `n` writes since the last sync reached the platter.
    KeepPrefix(usize),
    /// The first `n` writes, and the first half of the next one.
    TearAfter(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct State {
    /// What survives a power loss.
    durable: Vec<u8>,
    /// What reads see: durable plus every write since.
    current: Vec<u8>,
    /// Writes since the last successful sync, in order.
    unsynced: Vec<Op>,
    faults: DiskFaults,
    writes: u64,
    syncs: u64,
    failures: u64,
}

/// One simulated disk holding one file; clones share it (it outlives its node's restarts).
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// The power goes out: what was not synced is lost as `mode` says. Call it with the
    /// store's node killed, before it starts again.
    pub fn power_loss(&self, mode: PowerLoss) {
        let mut state = self.lock();
        let mut disk = state.durable.clone();
        let ops = std::mem::take(&mut state.unsynced);
        let (kept, torn) = match mode {
            PowerLoss::DropAll => (0, false),
            PowerLoss::KeepPrefix(n) => (n.min(ops.len()), false),
            PowerLoss::TearAfter(n) => (n.min(ops.len()), n < ops.len()),
        };
        for op in &ops[..kept] {
            apply(&mut disk, op);
        }
        if torn {
            if let Op::Write { offset, data } = &ops[kept] {
                let half = Op::Write {
                    offset: *offset,
                    data: data[..data.len() / 2].to_vec(),
                };
                apply(&mut disk, &half);
            }
        }
        state.current = disk.clone();
        state.durable = disk;
    }

    /// A power-loss mode drawn from `rng`, over the writes now unsynced.
    pub fn draw_power_loss(&self, rng: &mut impl Rng) -> PowerLoss {
        let pending = self.lock().unsynced.len();
        match rng.random_range(0..3) {
            0 => PowerLoss::DropAll,
            1 => PowerLoss::KeepPrefix(rng.random_range(0..=pending)),
            _ => PowerLoss::TearAfter(rng.random_range(0..=pending)),
        }
    }

    /// (writes, syncs, failed calls) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let state = self.lock();
        (state.writes, state.syncs, state.failures)
    }
}

fn apply(disk: &mut Vec<u8>, op: &Op) {
    match op {
        Op::SetLen(len) => disk.resize(*len as usize, 0),
        Op::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if disk.len() < end {
                disk.resize(end, 0);
            }
            disk[*offset as usize..end].copy_from_slice(data);
        }
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO on {what}"))
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.lock();
        let end = offset as usize + out.len();
        if end > state.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the simulated disk",
            ));
        }
        out.copy_from_slice(&state.current[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.lock();
        if state.faults.write_enospc && len > state.current.len() as u64 {
            state.failures += 1;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated ENOSPC",
            ));
        }
        let op = Op::SetLen(len);
        apply(&mut state.current, &op);
        state.unsynced.push(op);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.lock();
        if state.faults.sync_eio {
            state.failures += 1;
            return Err(eio("sync"));
        }
        let ops = std::mem::take(&mut state.unsynced);
        for op in &ops {
            apply(&mut state.durable, op);
        }
        state.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.lock();
        if state.faults.write_eio {
            state.failures += 1;
            return Err(eio("write"));
        }
        if state.faults.write_enospc && offset as usize + data.len() > state.current.len() {
            state.failures += 1;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated ENOSPC",
            ));
        }
        let op = Op::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut state.current, &op);
        state.unsynced.push(op);
        state.writes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn a_power_loss_keeps_what_was_synced_and_what_the_mode_says() {
        let disk = SimDisk::new();
        disk.write(0, b"aaaa").unwrap();
        disk.sync_data().unwrap();
        disk.write(0, b"bbbb").unwrap();
        disk.write(4, b"cccc").unwrap();
        disk.power_loss(PowerLoss::DropAll);
        let mut out = [0u8; 4];
        disk.read(0, &mut out).unwrap();
        assert_eq!(&out, b"aaaa");
        assert_eq!(disk.len().unwrap(), 4);

        disk.write(0, b"bbbb").unwrap();
        disk.write(4, b"cccc").unwrap();
        disk.power_loss(PowerLoss::TearAfter(0));
        disk.read(0, &mut out).unwrap();
        assert_eq!(&out, b"bbaa", "the first write torn in half");

        disk.write(4, b"dddd").unwrap();
        disk.power_loss(PowerLoss::KeepPrefix(1));
        let mut all = [0u8; 8];
        disk.read(0, &mut all).unwrap();
        assert_eq!(&all, b"bbaadddd");
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let disk = SimDisk::new();
        disk.write(0, b"aaaa").unwrap();
        disk.set_faults(DiskFaults {
            sync_eio: true,
            ..DiskFaults::default()
        });
        assert!(disk.sync_data().is_err());
        disk.set_faults(DiskFaults::default());
        disk.power_loss(PowerLoss::DropAll);
        assert_eq!(disk.len().unwrap(), 0);
    }
}
