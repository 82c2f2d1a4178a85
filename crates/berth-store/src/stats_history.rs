//! Resource use over time per service, bounded: raw samples for the recent past, averaged into
//! fixed buckets further back (token counts summed), nothing past the retention. The sampler records and compacts;
//! the console's charts and `GET /api/services/{id}/stats/history` read.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Conn, StoreError};

/// One point: a service's replicas summed at one time (or averaged over one bucket).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsSample {
    /// Unix ms (a bucket's start for averaged points).
    pub at_ms: i64,
    /// 0 for a raw sample, else the bucket's length in ms.
    pub resolution_ms: i64,
    /// CPU in percent of one core (200 = two cores busy).
    pub cpu_percent: f64,
    /// Memory in use.
    pub memory_bytes: i64,
    /// Memory limit.
    pub memory_limit_bytes: i64,
    /// Processes and threads.
    pub pids: i64,
    /// GPU memory in use, where the node reports it.
    pub gpu_memory_bytes: Option<i64>,
    /// GPU utilization in whole percent (as NVML reports it), where the node reports it.
    pub gpu_utilization_percent: Option<i64>,
    /// Prompt tokens of its answers through the OpenAI-compatible front since the sample
    /// before (a bucket's: summed over it).
    pub prompt_tokens: i64,
    /// Completion tokens of the same.
    pub completion_tokens: i64,
}

impl StatsSample {
    /// A sample at `at_ms` of `resolution_ms` with nothing in use yet, to add to.
    pub fn zero(at_ms: i64, resolution_ms: i64) -> Self {
        Self {
            at_ms,
            resolution_ms,
            cpu_percent: 0.0,
            memory_bytes: 0,
            memory_limit_bytes: 0,
            pids: 0,
            gpu_memory_bytes: None,
            gpu_utilization_percent: None,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }
}

/// How long raw samples and buckets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw samples newer than this are kept as they are.
    pub raw_ms: i64,
    /// Older samples are averaged into buckets of this length.
    pub bucket_ms: i64,
    /// Nothing older than this is kept.
    pub total_ms: i64,
}

impl Default for Retention {
    /// One hour raw, then five-minute averages, 24 hours in all.
    fn default() -> Self {
        Self {
            raw_ms: 3_600_000,
            bucket_ms: 300_000,
            total_ms: 86_400_000,
        }
    }
}

fn sample_from(row: &AnyRow) -> Result<StatsSample, sqlx::Error> {
    Ok(StatsSample {
        at_ms: row.try_get("at_ms")?,
        resolution_ms: row.try_get("resolution_ms")?,
        cpu_percent: row.try_get("cpu_percent")?,
        memory_bytes: row.try_get("memory_bytes")?,
        memory_limit_bytes: row.try_get("memory_limit_bytes")?,
        pids: row.try_get("pids")?,
        gpu_memory_bytes: row.try_get("gpu_memory_bytes")?,
        gpu_utilization_percent: row.try_get("gpu_utilization_percent")?,
        prompt_tokens: row.try_get("prompt_tokens")?,
        completion_tokens: row.try_get("completion_tokens")?,
    })
}

/// Records a raw sample of `service_id`; a second sample at the same millisecond, or one of a
/// service deleted meanwhile, is ignored.
pub async fn record(
    conn: &mut Conn,
    service_id: i64,
    sample: &StatsSample,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO stats_samples (service_id, at_ms, resolution_ms, cpu_percent, memory_bytes, \
         memory_limit_bytes, pids, gpu_memory_bytes, gpu_utilization_percent, prompt_tokens, \
         completion_tokens) \
         SELECT $1, $2, 0, $3, $4, $5, $6, $7, $8, $9, $10 \
         WHERE EXISTS (SELECT 1 FROM services WHERE id = $1) ON CONFLICT DO NOTHING",
    )
    .bind(service_id)
    .bind(sample.at_ms)
    .bind(sample.cpu_percent)
    .bind(sample.memory_bytes)
    .bind(sample.memory_limit_bytes)
    .bind(sample.pids)
    .bind(sample.gpu_memory_bytes)
    .bind(sample.gpu_utilization_percent)
    .bind(sample.prompt_tokens)
    .bind(sample.completion_tokens)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Averages raw samples older than the raw window into buckets and drops what is past the
/// retention. The raw window's edge is rounded down to a bucket boundary, so a bucket is made
/// once, from all of its samples. Returns the rows removed.
pub async fn compact(
    conn: &mut Conn,
    now_ms: i64,
    retention: Retention,
) -> Result<u64, StoreError> {
    let bucket = retention.bucket_ms.max(1);
    let edge = (now_ms - retention.raw_ms).div_euclid(bucket) * bucket;
    sqlx::query(
        "INSERT INTO stats_samples (service_id, at_ms, resolution_ms, cpu_percent, memory_bytes, \
         memory_limit_bytes, pids, gpu_memory_bytes, gpu_utilization_percent, prompt_tokens, \
         completion_tokens) \
         SELECT service_id, (at_ms / $1) * $1, $1, AVG(cpu_percent), CAST(AVG(memory_bytes) AS BIGINT), \
         MAX(memory_limit_bytes), MAX(pids), CAST(AVG(gpu_memory_bytes) AS BIGINT), \
         CAST(AVG(gpu_utilization_percent) AS BIGINT), CAST(SUM(prompt_tokens) AS BIGINT), \
         CAST(SUM(completion_tokens) AS BIGINT) \
         FROM stats_samples WHERE resolution_ms = 0 AND at_ms < $2 \
         GROUP BY service_id, at_ms / $1 ON CONFLICT DO NOTHING",
    )
    .bind(bucket)
    .bind(edge)
    .execute(&mut *conn)
    .await?;
    let raw = sqlx::query("DELETE FROM stats_samples WHERE resolution_ms = 0 AND at_ms < $1")
        .bind(edge)
        .execute(&mut *conn)
        .await?;
    let old = sqlx::query("DELETE FROM stats_samples WHERE at_ms < $1")
        .bind(now_ms - retention.total_ms)
        .execute(&mut *conn)
        .await?;
    Ok(raw.rows_affected() + old.rows_affected())
}

/// The points of `service_id` since `since_ms`, oldest first.
pub async fn since(
    conn: &mut Conn,
    service_id: i64,
    since_ms: i64,
) -> Result<Vec<StatsSample>, StoreError> {
    let rows = sqlx::query(
        "SELECT at_ms, resolution_ms, cpu_percent, memory_bytes, memory_limit_bytes, pids, \
         gpu_memory_bytes, gpu_utilization_percent, prompt_tokens, completion_tokens \
         FROM stats_samples \
         WHERE service_id = $1 AND at_ms >= $2 ORDER BY at_ms, resolution_ms DESC",
    )
    .bind(service_id)
    .bind(since_ms)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(sample_from).collect::<Result<_, _>>()?)
}
