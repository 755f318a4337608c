//! The VIP maps of both families, each a hash (`VIPS4`, `VIPS6`: address →
//! VHID) behind a prefilter array (`VIPS4_SLOTS`, `VIPS6_SLOTS`: how many
//! VIPs fall in a slot and, when one, which and its VHID; see
//! [`carp_common::VipSlot`] and [`names::VIPS4_SLOTS`]). One generic
//! bookkeeping keeps each prefilter in step with its hash, so both families
//! follow the same update order; the public calls of each family are thin
//! wrappers ([`XdpInstance::add_vip`], [`XdpInstance::add_vip6`], ...).
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, HashMap, MapData, MapError},
    sys::SyscallError,
    Pod,
};
use carp_common::{names, Vip6Slot, VipSlot};

use super::{map_err, XdpError, XdpInstance};

/// One address family's pair of maps: the key of its hash (which the slot
/// stores too) and how an address picks its slot.
trait Family {
    /// The hash's key, as the program reads it from the packet.
    type Key: Pod + PartialEq;
    const VIPS: &'static str;
    const SLOTS: &'static str;
    fn slot(key: &Self::Key) -> u32;
}

struct V4;
struct V6;

impl Family for V4 {
    /// The address's 4 wire-order bytes read as a native u32 ([`super::vip_key`]).
    type Key = u32;
    const VIPS: &'static str = names::VIPS4;
    const SLOTS: &'static str = names::VIPS4_SLOTS;
    fn slot(key: &u32) -> u32 {
        carp_common::vip_slot(key.to_ne_bytes())
    }
}

impl Family for V6 {
    /// The address's 16 wire-order bytes.
    type Key = [u8; 16];
    const VIPS: &'static str = names::VIPS6;
    const SLOTS: &'static str = names::VIPS6_SLOTS;
    fn slot(key: &[u8; 16]) -> u32 {
        carp_common::vip6_slot(key)
    }
}

impl XdpInstance {
    fn vips<F: Family>(&self) -> Result<HashMap<&MapData, F::Key, u32>, XdpError> {
        let map = self
            .ebpf
            .map(F::VIPS)
            .ok_or(XdpError::MissingMap { name: F::VIPS })?;
        HashMap::try_from(map).map_err(map_err(F::VIPS, "open"))
    }

    fn vips_mut<F: Family>(&mut self) -> Result<HashMap<&mut MapData, F::Key, u32>, XdpError> {
        let map = self
            .ebpf
            .map_mut(F::VIPS)
            .ok_or(XdpError::MissingMap { name: F::VIPS })?;
        HashMap::try_from(map).map_err(map_err(F::VIPS, "open"))
    }

    /// The VHID `key` maps to in the family's hash, if any.
    fn vip_of<F: Family>(&self, key: &F::Key) -> Result<Option<u32>, XdpError> {
        match self.vips::<F>()?.get(key, 0) {
            Ok(vhid) => Ok(Some(vhid)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(XdpError::Map {
                name: F::VIPS,
                op: "lookup",
                source,
            }),
        }
    }

    fn slot_at<F: Family>(&self, index: u32) -> Result<VipSlot<F::Key>, XdpError>
    where
        VipSlot<F::Key>: Pod,
    {
        let map = self
            .ebpf
            .map(F::SLOTS)
            .ok_or(XdpError::MissingMap { name: F::SLOTS })?;
        let slots: Array<&MapData, VipSlot<F::Key>> =
            Array::try_from(map).map_err(map_err(F::SLOTS, "open"))?;
        slots.get(&index, 0).map_err(map_err(F::SLOTS, "lookup"))
    }

    fn set_slot<F: Family>(&mut self, index: u32, slot: VipSlot<F::Key>) -> Result<(), XdpError>
    where
        VipSlot<F::Key>: Pod,
    {
        let map = self
            .ebpf
            .map_mut(F::SLOTS)
            .ok_or(XdpError::MissingMap { name: F::SLOTS })?;
        let mut slots: Array<&mut MapData, VipSlot<F::Key>> =
            Array::try_from(map).map_err(map_err(F::SLOTS, "open"))?;
        slots
            .set(index, slot, 0)
            .map_err(map_err(F::SLOTS, "update"))
    }

    /// Writes `to` over `from` in the steps [`VipSlot`] asks for: the count
    /// and the (address, VHID) pair never change in one update, so a packet
    /// that reads the slot mid-update sees the old value, the new one, or the
    /// old count with the new pair (or the other way round), each of them
    /// true at some instant or a value that sends it to the hash.
    fn move_slot<F: Family>(
        &mut self,
        index: u32,
        from: VipSlot<F::Key>,
        to: VipSlot<F::Key>,
    ) -> Result<(), XdpError>
    where
        VipSlot<F::Key>: Pod,
    {
        if (from.addr, from.vhid) != (to.addr, to.vhid) && from.count != to.count {
            self.set_slot::<F>(
                index,
                VipSlot {
                    count: from.count,
                    ..to
                },
            )?;
        }
        self.set_slot::<F>(index, to)
    }

    /// The keys of the family's hash (with their VHIDs) that fall in slot
    /// `index`.
    fn vips_in_slot<F: Family>(&self, index: u32) -> Result<Vec<(F::Key, u32)>, XdpError> {
        let mut out = Vec::new();
        for item in self.vips::<F>()?.iter() {
            let (key, vhid) = item.map_err(map_err(F::VIPS, "iterate"))?;
            if F::slot(&key) == index {
                out.push((key, vhid));
            }
        }
        Ok(out)
    }

    /// Sets slot `index` from what the hash holds now (after a VIP went): the
    /// count, and the sole VIP when one is left.
    fn recount_slot<F: Family>(&mut self, index: u32) -> Result<(), XdpError>
    where
        VipSlot<F::Key>: Pod,
    {
        let from = self.slot_at::<F>(index)?;
        let mut left = self.vips_in_slot::<F>(index)?;
        let to = match left.len() {
            1 => {
                let (addr, vhid) = left.remove(0);
                VipSlot {
                    count: 1,
                    addr,
                    vhid,
                    _pad: 0,
                }
            }
            n => VipSlot {
                count: u32::try_from(n).unwrap_or(u32::MAX),
                ..from
            },
        };
        self.move_slot::<F>(index, from, to)
    }

    /// Maps the VIP `key` to `vhid` (insert or replace) in the hash and its
    /// slot. Adding a VIP that is already there only changes its VHID.
    fn insert_vip<F: Family>(&mut self, key: F::Key, vhid: u8) -> Result<(), XdpError>
    where
        VipSlot<F::Key>: Pod,
    {
        if vhid == 0 {
            return Err(XdpError::InvalidVhid);
        }
        let index = F::slot(&key);
        let present = self.vip_of::<F>(&key)?.is_some();
        let slot = self.slot_at::<F>(index)?;
        // Make before break: a slot that already counts other VIPs counts
        // this one before it exists (the program then asks the hash, which
        // finds it once inserted). A first VIP for the slot goes into the
        // hash first and into the slot after: until then it is simply not
        // a VIP yet.
        let raised = !present && slot.count > 0;
        if raised {
            self.set_slot::<F>(
                index,
                VipSlot {
                    count: slot.count + 1,
                    ..slot
                },
            )?;
        }
        let inserted = self
            .vips_mut::<F>()?
            .insert(key, u32::from(vhid), 0)
            .map_err(map_err(F::VIPS, "insert"));
        if let Err(e) = inserted {
            if raised {
                // Best effort: a count left too high costs only hash lookups.
                let _ = self.set_slot::<F>(index, slot);
            }
            return Err(e);
        }
        let sole = VipSlot {
            count: 1,
            addr: key,
            vhid: u32::from(vhid),
            _pad: 0,
        };
        if slot.count == 0 || (present && slot.count == 1) {
            // A first VIP for the slot, or the sole one moving to another VHID.
            self.move_slot::<F>(index, slot, sole)?;
        }
        Ok(())
    }

    /// Forgets the VIP `key`; removing an absent address is not an error.
    fn delete_vip<F: Family>(&mut self, key: F::Key) -> Result<(), XdpError>
    where
        VipSlot<F::Key>: Pod,
    {
        match self.vips_mut::<F>()?.remove(&key) {
            // The VIP is gone from the hash first; only then may the slot
            // forget it.
            Ok(()) => self.recount_slot::<F>(F::slot(&key)),
            Err(MapError::KeyNotFound) => Ok(()),
            // aya 0.14 reports a missing key on delete as the raw ENOENT.
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(XdpError::Map {
                name: F::VIPS,
                op: "delete",
                source,
            }),
        }
    }

    /// Maps the IPv4 VIP `addr` to `vhid` (insert or replace). Adding a VIP
    /// that is already there only changes its VHID.
    pub fn add_vip(&mut self, addr: Ipv4Addr, vhid: u8) -> Result<(), XdpError> {
        self.insert_vip::<V4>(super::vip_key(addr), vhid)
    }

    /// Forgets the IPv4 VIP `addr`; removing an absent address is not an error.
    pub fn remove_vip(&mut self, addr: Ipv4Addr) -> Result<(), XdpError> {
        self.delete_vip::<V4>(super::vip_key(addr))
    }

    /// The prefilter slot `addr` falls in ([`carp_common::vip_slot`]), as the
    /// program sees it.
    pub fn vip_slot(&self, addr: Ipv4Addr) -> Result<VipSlot, XdpError> {
        self.slot_at::<V4>(super::slot_index(addr))
    }

    /// How many VIPs share the prefilter slot of `addr`, as the program sees
    /// it (for tests and diagnostics).
    pub fn vip_slot_count(&self, addr: Ipv4Addr) -> Result<u32, XdpError> {
        Ok(self.vip_slot(addr)?.count)
    }

    /// Maps the IPv6 VIP `addr` to `vhid` (insert or replace): from now on
    /// the program answers neighbour solicitations for it while `vhid` is
    /// MASTER and drops them and its traffic otherwise.
    pub fn add_vip6(&mut self, addr: Ipv6Addr, vhid: u8) -> Result<(), XdpError> {
        self.insert_vip::<V6>(addr.octets(), vhid)
    }

    /// Forgets the IPv6 VIP `addr`; removing an absent address is not an
    /// error.
    pub fn remove_vip6(&mut self, addr: Ipv6Addr) -> Result<(), XdpError> {
        self.delete_vip::<V6>(addr.octets())
    }

    /// The VHID the program sees for the IPv6 VIP `addr`, `None` if it is
    /// no VIP (for tests and diagnostics).
    pub fn vip6(&self, addr: Ipv6Addr) -> Result<Option<u8>, XdpError> {
        Ok(self
            .vip_of::<V6>(&addr.octets())?
            .and_then(|vhid| u8::try_from(vhid).ok()))
    }

    /// The `VIPS6_SLOTS` slot `addr` falls in ([`carp_common::vip6_slot`]),
    /// as the program sees it.
    pub fn vip6_slot(&self, addr: Ipv6Addr) -> Result<Vip6Slot, XdpError> {
        self.slot_at::<V6>(carp_common::vip6_slot(&addr.octets()))
    }
}
