-- Scheduling: what each placed container takes (CPU, memory, disk, which GPUs or which GPU's
-- memory slice), the placement generation that fences a moved replica, pinned services, and the
-- identity that marks this hub's containers on shared engines.
ALTER TABLE services ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
ALTER TABLE services ADD COLUMN pinned BIGINT NOT NULL DEFAULT 0;
ALTER TABLE containers ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
ALTER TABLE containers ADD COLUMN cpu_millis BIGINT NOT NULL DEFAULT 0;
ALTER TABLE containers ADD COLUMN memory_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE containers ADD COLUMN disk_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE containers ADD COLUMN gpu_indices TEXT NOT NULL DEFAULT '';
ALTER TABLE containers ADD COLUMN gpu_memory_bytes BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX containers_service ON containers(service_id);

CREATE TABLE hub_identity (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
