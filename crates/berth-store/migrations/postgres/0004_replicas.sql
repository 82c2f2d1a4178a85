-- Replicas: a service runs `replicas` containers, each with its own allocation and generation.
ALTER TABLE services ADD COLUMN replicas BIGINT NOT NULL DEFAULT 1;
ALTER TABLE containers ADD COLUMN replica BIGINT NOT NULL DEFAULT 0;
DROP INDEX containers_service;
CREATE UNIQUE INDEX containers_service_replica ON containers(service_id, replica);
