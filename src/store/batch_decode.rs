//! Stored rows turned into records on the blocking pool, a batch at a time, while the next
//! rows are read: at start the key-set parsing runs on another core than the database's
//! reading, and the records come out in the order the rows went in.

use std::{collections::VecDeque, sync::Arc};

use tokio::task::JoinHandle;

use super::{StoreError, row::StoredRow, unreadable::UnreadableRows};
use crate::state::record::ProviderRecord;

/// Rows handed to the blocking pool at once.
const BATCH_ROWS: usize = 256;
/// Batches being decoded before reading waits for the oldest: bounds the rows held.
const BATCHES_IN_FLIGHT: usize = 4;

type Decoding = JoinHandle<Vec<Arc<ProviderRecord>>>;

/// Decodes the rows pushed into it; unreadable rows are reported and left out.
pub(super) struct BatchDecoder {
    unreadable: Arc<UnreadableRows>,
    batch: Vec<StoredRow>,
    decoding: VecDeque<Decoding>,
    records: Vec<Arc<ProviderRecord>>,
}

impl BatchDecoder {
    pub(super) fn new(unreadable: &Arc<UnreadableRows>) -> Self {
        Self {
            unreadable: Arc::clone(unreadable),
            batch: Vec::with_capacity(BATCH_ROWS),
            decoding: VecDeque::new(),
            records: Vec::new(),
        }
    }

    /// Adds a row; waits for the oldest batch when enough are being decoded.
    pub(super) async fn push(&mut self, row: StoredRow) -> Result<(), StoreError> {
        self.batch.push(row);
        if self.batch.len() == BATCH_ROWS {
            self.hand_off();
        }
        if self.decoding.len() > BATCHES_IN_FLIGHT {
            self.collect_oldest().await?;
        }
        Ok(())
    }

    /// Every record, in the order of the rows.
    pub(super) async fn finish(mut self) -> Result<Vec<Arc<ProviderRecord>>, StoreError> {
        self.hand_off();
        while !self.decoding.is_empty() {
            self.collect_oldest().await?;
        }
        Ok(self.records)
    }

    fn hand_off(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ROWS));
        let unreadable = Arc::clone(&self.unreadable);
        self.decoding
            .push_back(tokio::task::spawn_blocking(move || {
                batch
                    .into_iter()
                    .filter_map(|row| row.into_record(&unreadable).map(Arc::new))
                    .collect()
            }));
    }

    async fn collect_oldest(&mut self) -> Result<(), StoreError> {
        if let Some(decoding) = self.decoding.pop_front() {
            self.records
                .extend(decoding.await.map_err(StoreError::Decoding)?);
        }
        Ok(())
    }
}
