-- The leader lease of several hubs on one database (one row, 'leader'); times are Unix ms.
CREATE TABLE hub_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    holder_url TEXT NOT NULL,
    term INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
