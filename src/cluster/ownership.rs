//! Which shards this replica refreshes right now, and the flights running in each. A flight
//! starts only in a shard that is held and not being handed over; the lease keeper hands a
//! shard over only once its flights are done, so no shard is fetched by two replicas at
//! once. A single node owns every shard, without leases.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{Notify, futures::Notified, watch};

use super::ShardMap;
use crate::{domain::ProviderKey, store::Fence};

/// A shard this replica holds.
#[derive(Debug)]
struct Holding {
    fence: Fence,
    /// Being handed over: no new flight starts in it.
    draining: bool,
    in_flight: usize,
}

/// What this replica owns.
#[derive(Debug)]
enum Owned {
    /// A single node: every shard, writes unfenced.
    Everything,
    /// A fleet replica: the shards whose leases it holds.
    Shards(BTreeMap<u32, Holding>),
}

/// This replica's shards, live.
#[derive(Debug)]
pub struct Ownership {
    map: ShardMap,
    owned: Mutex<Owned>,
    changed: watch::Sender<()>,
    drained: Notify,
    acquired: AtomicU64,
}

/// A running flight in a shard this replica owns: its writes carry the shard's fence (none on
/// a single node). Dropping it ends the flight.
#[derive(Debug)]
pub struct FlightPermit {
    ownership: Arc<Ownership>,
    shard: u32,
    fence: Option<Fence>,
}

impl FlightPermit {
    /// The fence the flight's writes must carry.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }
}

impl Drop for FlightPermit {
    fn drop(&mut self) {
        self.ownership.end_flight(self.shard, self.fence.as_ref());
    }
}

/// Wakes when this replica's shards change.
#[derive(Debug, Clone)]
pub struct OwnershipChanges(watch::Receiver<()>);

impl OwnershipChanges {
    /// Returns at the next change (never, on a single node).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Ownership {
    /// A single node, owning every shard for good.
    pub fn single_node() -> Arc<Self> {
        Self::with(ShardMap::new(1), Owned::Everything)
    }

    /// A fleet replica over `map`, owning nothing until the lease keeper says so.
    pub fn fleet(map: ShardMap) -> Arc<Self> {
        Self::with(map, Owned::Shards(BTreeMap::new()))
    }

    fn with(map: ShardMap, owned: Owned) -> Arc<Self> {
        Arc::new(Self {
            map,
            owned: Mutex::new(owned),
            changed: watch::Sender::new(()),
            drained: Notify::new(),
            acquired: AtomicU64::new(0),
        })
    }

    /// The fleet's shards.
    pub fn shard_map(&self) -> ShardMap {
        self.map
    }

    /// Whether this replica may start refreshing `key` now.
    pub fn owns(&self, key: &ProviderKey) -> bool {
        match &*self.lock() {
            Owned::Everything => true,
            Owned::Shards(held) => held
                .get(&self.map.shard_of(key))
                .is_some_and(|holding| !holding.draining),
        }
    }

    /// Starts a flight for `key`, if this replica owns its shard and is not handing it over.
    pub fn begin_flight(self: &Arc<Self>, key: &ProviderKey) -> Option<FlightPermit> {
        let shard = self.map.shard_of(key);
        let fence = match &mut *self.lock() {
            Owned::Everything => None,
            Owned::Shards(held) => {
                let holding = held.get_mut(&shard).filter(|h| !h.draining)?;
                holding.in_flight += 1;
                Some(holding.fence.clone())
            }
        };
        Some(FlightPermit {
            ownership: Arc::clone(self),
            shard,
            fence,
        })
    }

    /// Follows this replica's shards.
    pub fn subscribe(&self) -> OwnershipChanges {
        OwnershipChanges(self.changed.subscribe())
    }

    /// How many shards this replica refreshes (all of them on a single node).
    pub fn owned_count(&self) -> usize {
        match &*self.lock() {
            Owned::Everything => 1,
            Owned::Shards(held) => held.len(),
        }
    }

    /// How many shard leases this replica has taken since it started.
    pub fn acquired_total(&self) -> u64 {
        self.acquired.load(Ordering::Relaxed)
    }

    /// Holds exactly `fences` from now on, handing over those in `draining`; shards kept
    /// keep their flights.
    pub(super) fn hold(&self, fences: Vec<Fence>, draining: &[u32]) {
        let mut owned = self.lock();
        let Owned::Shards(held) = &mut *owned else {
            return;
        };
        let before = summary(held);
        let mut next = BTreeMap::new();
        for fence in fences {
            let kept = held.remove(&fence.shard).filter(|kept| kept.fence == fence);
            if kept.is_none() {
                self.acquired.fetch_add(1, Ordering::Relaxed);
            }
            let holding = Holding {
                draining: draining.contains(&fence.shard),
                in_flight: kept.map_or(0, |kept| kept.in_flight),
                fence,
            };
            next.insert(holding.fence.shard, holding);
        }
        let changed = summary(&next) != before;
        *held = next;
        drop(owned);
        if changed {
            self.changed.send_replace(());
        }
    }

    /// Those of `shards` with no flight running.
    pub(super) fn idle(&self, shards: &[u32]) -> Vec<u32> {
        match &*self.lock() {
            Owned::Everything => Vec::new(),
            Owned::Shards(held) => shards
                .iter()
                .copied()
                .filter(|shard| held.get(shard).is_none_or(|h| h.in_flight == 0))
                .collect(),
        }
    }

    /// Completes when a flight ends somewhere after this call (`enable` it before checking
    /// `idle`).
    pub(super) fn flight_ended(&self) -> Notified<'_> {
        self.drained.notified()
    }

    fn end_flight(&self, shard: u32, fence: Option<&Fence>) {
        let Some(fence) = fence else {
            return;
        };
        if let Owned::Shards(held) = &mut *self.lock()
            && let Some(holding) = held.get_mut(&shard).filter(|h| h.fence == *fence)
        {
            holding.in_flight = holding.in_flight.saturating_sub(1);
        }
        self.drained.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a change of holdings is judged by: shards, terms and which are handed over.
fn summary(held: &BTreeMap<u32, Holding>) -> Vec<(u32, i64, bool)> {
    held.values()
        .map(|h| (h.fence.shard, h.fence.term, h.draining))
        .collect()
}
