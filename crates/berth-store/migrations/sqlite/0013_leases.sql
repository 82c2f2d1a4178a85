-- The leader lease of several hubs on one database (one row, 'leader'); times are Unix ms.
CREATE TABLE hub_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    holder_url TEXT NOT NULL,
    term BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
