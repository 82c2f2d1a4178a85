-- Tokens with a life: an optional expiry, and console sessions that end with the token they
-- were opened with (revoking a token deletes its row, and its sessions with it).
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE console_sessions ADD COLUMN token_id BIGINT REFERENCES api_tokens(id) ON DELETE CASCADE;
