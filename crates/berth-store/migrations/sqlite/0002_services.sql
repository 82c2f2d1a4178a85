-- Images, product specs, services, and the deployment history of each service.
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    reference TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE TABLE specs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    cpu_millis BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    system_disk_bytes BIGINT,
    data_disk_bytes BIGINT,
    gpu_count BIGINT NOT NULL DEFAULT 0,
    memory_split BIGINT NOT NULL DEFAULT 0,
    gpu_memory_gb BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE services (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id BIGINT NOT NULL REFERENCES users(id),
    repo TEXT NOT NULL,
    name TEXT NOT NULL,
    image TEXT NOT NULL,
    spec_id BIGINT REFERENCES specs(id),
    cpu_millis BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    gpu_count BIGINT NOT NULL DEFAULT 0,
    definition TEXT NOT NULL,
    is_public BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    node_id BIGINT REFERENCES nodes(id),
    container_id TEXT,
    container_name TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    error TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id BIGINT NOT NULL,
    version BIGINT NOT NULL,
    definition TEXT NOT NULL,
    node_id BIGINT,
    user_id BIGINT,
    note TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (service_id, version)
);
