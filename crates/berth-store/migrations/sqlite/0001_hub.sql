-- Users, API tokens, compute nodes, the containers Berth runs on them, and the audit log.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    max_services BIGINT,
    max_cpu_millis BIGINT,
    max_memory_bytes BIGINT,
    max_gpus BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);

CREATE TABLE nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    region TEXT NOT NULL DEFAULT '',
    cpu TEXT NOT NULL DEFAULT '',
    memory TEXT NOT NULL DEFAULT '',
    system_disk TEXT NOT NULL DEFAULT '',
    data_disk TEXT NOT NULL DEFAULT '',
    public_ip TEXT NOT NULL DEFAULT '',
    private_ip TEXT NOT NULL DEFAULT '',
    ssh_port BIGINT NOT NULL DEFAULT 22,
    ssh_user TEXT NOT NULL DEFAULT '',
    ssh_password_sealed TEXT,
    gpu_model TEXT NOT NULL DEFAULT '',
    gpu_count BIGINT NOT NULL DEFAULT 0,
    gpu_memory_gb BIGINT NOT NULL DEFAULT 0,
    hami_core_dir TEXT NOT NULL DEFAULT '',
    driver TEXT NOT NULL,
    docker_address TEXT NOT NULL DEFAULT '',
    use_tls BIGINT NOT NULL DEFAULT 1,
    ca_cert_sealed TEXT,
    client_cert_sealed TEXT,
    client_key_sealed TEXT,
    agent_url TEXT NOT NULL DEFAULT '',
    agent_key_sealed TEXT,
    server_type TEXT NOT NULL DEFAULT 'cpu',
    enabled BIGINT NOT NULL DEFAULT 1,
    listed BIGINT NOT NULL DEFAULT 1,
    priority BIGINT NOT NULL DEFAULT 100,
    weight BIGINT NOT NULL DEFAULT 100,
    remark TEXT NOT NULL DEFAULT '',
    docker_status TEXT NOT NULL DEFAULT 'unknown',
    status_message TEXT NOT NULL DEFAULT '',
    last_checked_at BIGINT,
    observed TEXT NOT NULL DEFAULT '{}',
    origin TEXT NOT NULL DEFAULT 'api',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE containers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id BIGINT NOT NULL REFERENCES nodes(id),
    service_id BIGINT,
    container_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX containers_node ON containers(node_id);

CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    user_id BIGINT,
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    node_id BIGINT,
    service_id BIGINT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX operations_at ON operations(at);
