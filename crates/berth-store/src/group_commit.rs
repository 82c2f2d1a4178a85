//! Group commit: small writes from many tasks at once share one transaction. A task queues its
//! write and waits for the store's batch turn; whoever gets the turn commits everything queued
//! so far, each write in its own savepoint, so one write's failure is that write's alone. A
//! write's caller hears back only after the commit, so an answered write is durable as if it
//! had its own transaction; under load the database sees one commit for many writes instead of
//! one each.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use sqlx::Acquire;
use tokio::sync::oneshot;

use crate::{Conn, Store, StoreError};

/// The future of one queued write, borrowing the batch's connection.
pub type WriteFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;

type Write = Box<dyn for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, ()> + Send>;

struct Queued {
    write: Write,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The writes waiting for the next batch, and the turn batches take one at a time.
#[derive(Default)]
pub(crate) struct CommitQueue {
    queued: Mutex<Vec<Queued>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for CommitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitQueue").finish_non_exhaustive()
    }
}

impl Store {
    /// Runs `write` in the next batch of writes and answers once that batch committed. `write`
    /// sees the batch's connection inside a savepoint: its error rolls back its own changes
    /// only. Use it for writes that many tasks make at once (progress, an operation's end);
    /// a change that must read and decide under the write lock with others waiting takes
    /// [`Store::begin`].
    pub async fn write_together<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, T> + Send + 'static,
    {
        let value: Arc<Mutex<Option<T>>> = Arc::default();
        let slot = Arc::clone(&value);
        let write: Write = Box::new(move |conn| {
            Box::pin(async move {
                let written = write(conn).await?;
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(written);
                }
                Ok(())
            })
        });
        let (done, mut answer) = oneshot::channel();
        if let Ok(mut queued) = self.together.queued.lock() {
            queued.push(Queued { write, done });
        }
        loop {
            let turn = Arc::clone(&self.together.turn).lock_owned().await;
            match answer.try_recv() {
                Ok(result) => {
                    drop(turn);
                    result?;
                    break;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Invalid(
                        "the batch holding this write was cut off".to_owned(),
                    ));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch =
                std::mem::take(
                    &mut *self.together.queued.lock().map_err(|_| {
                        StoreError::Invalid("the write queue is unusable".to_owned())
                    })?,
                );
            // Its own task: a caller that stops waiting does not cut off the others' writes.
            let store = self.clone();
            let _ = tokio::spawn(async move {
                store.commit_batch(batch).await;
                drop(turn);
            })
            .await;
        }
        let written = value.lock().ok().and_then(|mut slot| slot.take());
        written.ok_or_else(|| StoreError::Invalid("the write gave no answer".to_owned()))
    }

    /// Commits `batch` in one transaction, one savepoint per write, and answers each.
    async fn commit_batch(&self, batch: Vec<Queued>) {
        let mut transaction = match self.begin().await {
            Ok(transaction) => transaction,
            Err(err) => {
                let message = err.to_string();
                for queued in batch {
                    let _ = queued.done.send(Err(StoreError::Invalid(message.clone())));
                }
                return;
            }
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for Queued { write, done } in batch {
            let outcome = async {
                let mut savepoint = (&mut *transaction).begin().await?;
                match write(&mut savepoint).await {
                    Ok(()) => {
                        savepoint.commit().await?;
                        Ok(())
                    }
                    Err(err) => {
                        savepoint.rollback().await?;
                        Err(err)
                    }
                }
            }
            .await;
            outcomes.push((done, outcome));
        }
        match transaction.commit().await {
            Ok(()) => {
                for (done, outcome) in outcomes {
                    let _ = done.send(outcome);
                }
            }
            Err(err) => {
                let message = format!("the batch did not commit: {err}");
                for (done, _) in outcomes {
                    let _ = done.send(Err(StoreError::Invalid(message.clone())));
                }
            }
        }
    }
}
