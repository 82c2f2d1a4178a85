-- Web console sessions: the cookie's value is known only to the browser; the table keeps its
-- SHA-256 and the CSRF token every form of the session carries.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Resource use of each running service, summed over its replicas: raw samples (resolution 0)
-- for the recent past, averaged buckets (resolution = bucket length in ms) further back.
CREATE TABLE stats_samples (
    service_id BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    at_ms BIGINT NOT NULL,
    resolution_ms BIGINT NOT NULL,
    cpu_percent DOUBLE PRECISION NOT NULL,
    memory_bytes BIGINT NOT NULL,
    memory_limit_bytes BIGINT NOT NULL,
    pids BIGINT NOT NULL,
    gpu_memory_bytes BIGINT,
    gpu_utilization_percent BIGINT,
    PRIMARY KEY (service_id, resolution_ms, at_ms)
);
CREATE INDEX stats_samples_time ON stats_samples (at_ms);
