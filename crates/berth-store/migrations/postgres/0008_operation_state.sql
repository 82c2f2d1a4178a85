-- Operations as resources: a change commits its operation row with its intent, and the row
-- follows the work (pending, running, then succeeded, failed or cancelled) with its progress,
-- its error in the user's terms and its times. A create may carry the client's Idempotency-Key:
-- one operation per user and key.
ALTER TABLE operations ADD COLUMN state TEXT NOT NULL DEFAULT 'succeeded';
ALTER TABLE operations ADD COLUMN progress TEXT NOT NULL DEFAULT '{}';
ALTER TABLE operations ADD COLUMN error TEXT NOT NULL DEFAULT '';
ALTER TABLE operations ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN finished_at BIGINT;
ALTER TABLE operations ADD COLUMN idempotency_key TEXT;
UPDATE operations SET state = 'failed' WHERE outcome IN ('failed', 'refused', 'rolled_back');
UPDATE operations SET updated_at = at, finished_at = at;
CREATE UNIQUE INDEX operations_idempotency ON operations(user_id, idempotency_key);
CREATE INDEX operations_unfinished ON operations(state) WHERE state IN ('pending', 'running');
CREATE INDEX operations_service ON operations(service_id);
