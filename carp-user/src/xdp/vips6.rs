//! `VIPS6`, the IPv6 VIPs of one instance: a plain hash from the address's
//! 16 wire-order bytes to the VHID, and `VIPS6_COUNT`, how many there are
//! (the program skips the hash while it is 0). The count is raised before an
//! insert and lowered after a delete, so the program never misses a VIP.
use std::net::Ipv6Addr;

use aya::{
    maps::{Array, HashMap, MapData, MapError},
    sys::SyscallError,
};
use carp_common::names;

use super::{map_err, XdpError, XdpInstance};

impl XdpInstance {
    fn vips6(&self) -> Result<HashMap<&MapData, [u8; 16], u32>, XdpError> {
        let map = self
            .ebpf
            .map(names::VIPS6)
            .ok_or(XdpError::MissingMap { name: names::VIPS6 })?;
        HashMap::try_from(map).map_err(map_err(names::VIPS6, "open"))
    }

    fn vips6_mut(&mut self) -> Result<HashMap<&mut MapData, [u8; 16], u32>, XdpError> {
        let map = self
            .ebpf
            .map_mut(names::VIPS6)
            .ok_or(XdpError::MissingMap { name: names::VIPS6 })?;
        HashMap::try_from(map).map_err(map_err(names::VIPS6, "open"))
    }

    fn count6_mut(&mut self) -> Result<Array<&mut MapData, u32>, XdpError> {
        let name = names::VIPS6_COUNT;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(XdpError::MissingMap { name })?;
        Array::try_from(map).map_err(map_err(name, "open"))
    }

    /// `VIPS6_COUNT` as the program sees it.
    pub fn vip6_count(&self) -> Result<u32, XdpError> {
        let name = names::VIPS6_COUNT;
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap { name })?;
        let count: Array<&MapData, u32> = Array::try_from(map).map_err(map_err(name, "open"))?;
        count.get(&0, 0).map_err(map_err(name, "lookup"))
    }

    fn set_count6(&mut self, n: u32) -> Result<(), XdpError> {
        self.count6_mut()?
            .set(0, n, 0)
            .map_err(map_err(names::VIPS6_COUNT, "update"))
    }

    /// Maps the IPv6 VIP `addr` to `vhid` (insert or replace): from now on
    /// the program answers neighbour solicitations for it while `vhid` is
    /// MASTER and drops them and its traffic otherwise.
    pub fn add_vip6(&mut self, addr: Ipv6Addr, vhid: u8) -> Result<(), XdpError> {
        if vhid == 0 {
            return Err(XdpError::InvalidVhid);
        }
        let present = self.vip6(addr)?.is_some();
        let count = self.vip6_count()?;
        if !present {
            self.set_count6(count.saturating_add(1))?;
        }
        let inserted = self
            .vips6_mut()?
            .insert(addr.octets(), u32::from(vhid), 0)
            .map_err(map_err(names::VIPS6, "insert"));
        if inserted.is_err() && !present {
            // Best effort: a count too high costs only hash lookups.
            let _ = self.set_count6(count);
        }
        inserted
    }

    /// Forgets the IPv6 VIP `addr`; removing an absent address is not an
    /// error.
    pub fn remove_vip6(&mut self, addr: Ipv6Addr) -> Result<(), XdpError> {
        match self.vips6_mut()?.remove(&addr.octets()) {
            Ok(()) => {
                let count = self.vip6_count()?;
                self.set_count6(count.saturating_sub(1))
            }
            Err(MapError::KeyNotFound) => Ok(()),
            // aya 0.14 reports a missing key on delete as the raw ENOENT.
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(XdpError::Map {
                name: names::VIPS6,
                op: "delete",
                source,
            }),
        }
    }

    /// The VHID the program sees for the IPv6 VIP `addr`, `None` if it is
    /// no VIP (for tests and diagnostics).
    pub fn vip6(&self, addr: Ipv6Addr) -> Result<Option<u8>, XdpError> {
        match self.vips6()?.get(&addr.octets(), 0) {
            Ok(vhid) => Ok(u8::try_from(vhid).ok()),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(XdpError::Map {
                name: names::VIPS6,
                op: "lookup",
                source,
            }),
        }
    }
}
