-- Session tokens: short-lived bearer tokens a client app uses to read one user's feed.
-- Stored as SHA-256 of the whole token (like API tokens); the secret is shown once.
CREATE TABLE session_tokens (
    token_id    text PRIMARY KEY,
    app_id      text NOT NULL REFERENCES apps ON DELETE CASCADE,
    user_id     text NOT NULL,
    token_hash  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
-- Expired rows are deleted when the app issues new session tokens (storage.add_session_token).
CREATE INDEX session_tokens_expiry ON session_tokens (expires_at);
