-- Join tokens: short-lived, single-use credentials with which a new host's `berth agent --join`
-- registers itself as a node. Only the token's hash is kept; `used_at` and `node_id` record the
-- one join it allowed.
CREATE TABLE join_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    created_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    node_name TEXT,
    used_at BIGINT,
    node_id BIGINT REFERENCES nodes(id) ON DELETE SET NULL
);
