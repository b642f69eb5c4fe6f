//! Longest-prefix match: which of a fixed set of CIDR prefixes an address falls in
//! ([`IpPrefixMap`]), for the subnet map, the traffic-path classes and the AWS ip-ranges.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// An address as an unsigned integer: `u32` for IPv4, `u128` for IPv6.
trait AddressBits: Copy + Ord + fmt::Debug {
    /// The host bits of a prefix of `len` bits set, the rest clear.
    fn host_mask(len: u8) -> Self;
    fn or(self, other: Self) -> Self;
    fn and_not(self, other: Self) -> Self;
    fn next(self) -> Option<Self>;
}

macro_rules! address_bits {
    ($t:ty) => {
        impl AddressBits for $t {
            fn host_mask(len: u8) -> Self {
                <$t>::MAX.checked_shr(u32::from(len)).unwrap_or(0)
            }
            fn or(self, other: Self) -> Self {
                self | other
            }
            fn and_not(self, other: Self) -> Self {
                self & !other
            }
            fn next(self) -> Option<Self> {
                self.checked_add(1)
            }
        }
    };
}
address_bits!(u32);
address_bits!(u128);

/// A value of no prefix.
pub(super) const NO_VALUE: u32 = u32::MAX;

/// One prefix given to [`PrefixMap::build`].
#[derive(Debug, Clone, Copy)]
struct PrefixEntry<A> {
    /// Network address (host bits clear).
    network: A,
    /// Prefix length.
    len: u8,
    /// Value of addresses in the prefix.
    value: u32,
    /// Among entries for the very same prefix, the lowest rank is kept.
    rank: u32,
    /// A generic entry (AWS's `AMAZON`) defers to any prefix enclosing it.
    generic: bool,
}

/// Longest-prefix match over a fixed set of CIDR prefixes, flattened into disjoint
/// address ranges: `starts` is sorted and `values[i]` holds from `starts[i]` up to
/// `starts[i + 1]`. A lookup is one binary search.
#[derive(Clone, Default)]
struct PrefixMap<A> {
    starts: Vec<A>,
    values: Vec<u32>,
}

impl<A: AddressBits> PrefixMap<A> {
    fn build(mut entries: Vec<PrefixEntry<A>>) -> Self {
        entries.sort_by_key(|e| (e.network, e.len, e.rank));
        entries.dedup_by(|later, kept| later.network == kept.network && later.len == kept.len);
        let mut map = PrefixMap {
            starts: Vec::new(),
            values: Vec::new(),
        };
        // Open prefixes enclosing the current one: (last address, value in force, whether
        // that value comes from a non-generic entry).
        let mut open: Vec<(A, u32, bool)> = Vec::new();
        for e in &entries {
            while let Some(&(last, _, _)) = open.last() {
                if last >= e.network {
                    break;
                }
                open.pop();
                if let Some(after) = last.next() {
                    map.push(after, open.last().map_or(NO_VALUE, |o| o.1));
                }
            }
            let (value, specific) = match open.last() {
                Some(&(_, enclosing, true)) if e.generic => (enclosing, true),
                _ => (e.value, !e.generic),
            };
            map.push(e.network, value);
            open.push((e.network.or(A::host_mask(e.len)), value, specific));
        }
        while let Some((last, _, _)) = open.pop() {
            if let Some(after) = last.next() {
                map.push(after, open.last().map_or(NO_VALUE, |o| o.1));
            }
        }
        map.starts.shrink_to_fit();
        map.values.shrink_to_fit();
        map
    }

    /// Starts a range at `at`; a later range at the same address replaces the earlier.
    fn push(&mut self, at: A, value: u32) {
        if self.starts.last() == Some(&at) {
            self.starts.pop();
            self.values.pop();
        }
        let current = self.values.last().copied().unwrap_or(NO_VALUE);
        if current != value {
            self.starts.push(at);
            self.values.push(value);
        }
    }

    fn lookup(&self, address: A) -> Option<u32> {
        let after = self.starts.partition_point(|s| *s <= address);
        let value = *self.values.get(after.checked_sub(1)?)?;
        (value != NO_VALUE).then_some(value)
    }
}

/// IPv4 and IPv6 prefix maps side by side.
#[derive(Clone, Default)]
pub(super) struct IpPrefixMap {
    v4: PrefixMap<u32>,
    v6: PrefixMap<u128>,
}

impl fmt::Debug for IpPrefixMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpPrefixMap")
            .field("v4_ranges", &self.v4.starts.len())
            .field("v6_ranges", &self.v6.starts.len())
            .finish()
    }
}

/// A prefix for [`IpPrefixMap::build`].
#[derive(Debug, Clone, Copy)]
pub(super) struct IpPrefix {
    pub(super) network: IpNetwork,
    pub(super) value: u32,
    pub(super) rank: u32,
    pub(super) generic: bool,
}

impl IpPrefixMap {
    pub(super) fn build(prefixes: impl IntoIterator<Item = IpPrefix>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for p in prefixes {
            let len = p.network.prefix();
            match p.network.ip() {
                IpAddr::V4(a) => v4.push(PrefixEntry {
                    network: u32::from(a).and_not(u32::host_mask(len)),
                    len,
                    value: p.value,
                    rank: p.rank,
                    generic: p.generic,
                }),
                IpAddr::V6(a) => v6.push(PrefixEntry {
                    network: u128::from(a).and_not(u128::host_mask(len)),
                    len,
                    value: p.value,
                    rank: p.rank,
                    generic: p.generic,
                }),
            }
        }
        IpPrefixMap {
            v4: PrefixMap::build(v4),
            v6: PrefixMap::build(v6),
        }
    }

    pub(super) fn lookup(&self, address: IpAddr) -> Option<u32> {
        match address {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.v4.starts.is_empty() && self.v6.starts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The reference: longest matching prefix, a generic entry deferring to an enclosing
    /// non-generic one, ties on the same prefix to the lowest rank.
    fn brute_force(entries: &[PrefixEntry<u32>], address: u32) -> Option<u32> {
        let matching = |e: &&PrefixEntry<u32>| address.and_not(u32::host_mask(e.len)) == e.network;
        let best = entries
            .iter()
            .filter(matching)
            .min_by_key(|e| (std::cmp::Reverse(e.len), e.rank))?;
        if best.generic
            && let Some(specific) = entries
                .iter()
                .filter(matching)
                .filter(|e| !e.generic && e.len < best.len)
                .min_by_key(|e| (std::cmp::Reverse(e.len), e.rank))
        {
            return Some(specific.value);
        }
        Some(best.value)
    }

    fn entry() -> impl Strategy<Value = PrefixEntry<u32>> {
        // Few distinct networks so that prefixes nest and repeat often. Value 0 plays
        // AMAZON: the generic service, ranked after every specific one, as the loader does.
        (0u32..16, 0u8..=32, 0u32..4).prop_map(|(seed, len, value)| {
            let network = seed
                .wrapping_mul(0x1357_9bdf)
                .rotate_left(u32::from(len) % 7)
                .and_not(u32::host_mask(len));
            PrefixEntry {
                network,
                len,
                value,
                rank: if value == 0 { u32::MAX } else { value },
                generic: value == 0,
            }
        })
    }

    proptest! {
        #[test]
        fn prefix_map_agrees_with_a_brute_force_search(
            entries in proptest::collection::vec(entry(), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 0..64),
        ) {
            let map = PrefixMap::build(entries.clone());
            let mut addresses = probes;
            for e in &entries {
                let last = e.network.or(u32::host_mask(e.len));
                addresses.extend([e.network, last, e.network.wrapping_sub(1), last.wrapping_add(1)]);
            }
            for a in addresses {
                prop_assert_eq!(map.lookup(a), brute_force(&entries, a), "address {:#x}", a);
            }
        }
    }
}
