-- Tokens of a service's answers through the OpenAI-compatible front since the sample before
-- (a bucket: summed over it), beside its resource use.
ALTER TABLE stats_samples ADD COLUMN prompt_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE stats_samples ADD COLUMN completion_tokens BIGINT NOT NULL DEFAULT 0;
