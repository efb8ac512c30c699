-- Apps, their API tokens (hashed), CleverTap integrations, templates, the per-user feed,
-- webhook dedupe, idempotency keys, delivery failures and the event outbox.

CREATE TABLE apps (
    app_id      text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    token_id    text PRIMARY KEY,
    app_id      text NOT NULL REFERENCES apps ON DELETE CASCADE,
    token_hash  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_tokens_app ON api_tokens (app_id);

CREATE TABLE integrations (
    app_id          text PRIMARY KEY REFERENCES apps ON DELETE CASCADE,
    event_callback  boolean NOT NULL DEFAULT false,
    project_id      text NOT NULL DEFAULT '',
    passcode        text NOT NULL DEFAULT '',
    api_endpoint    text NOT NULL DEFAULT '',
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE templates (
    app_id      text NOT NULL REFERENCES apps ON DELETE CASCADE,
    key         text NOT NULL,
    name        text NOT NULL,
    title       text NOT NULL,
    body        text NOT NULL,
    data        jsonb,
    variables   text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, key)
);

-- The feed. One row per (request, user, template): a broker redelivery of the same request
-- can never make a second row (ON CONFLICT DO NOTHING), however late it comes.
CREATE TABLE notifications (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id        text NOT NULL,
    user_id       text NOT NULL,
    request_id    uuid NOT NULL,
    template_key  text NOT NULL,
    target_id     bigint NOT NULL,
    event_name    text NOT NULL,
    object_id     text,
    identity      text,
    title         text NOT NULL,
    body          text NOT NULL,
    data          jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    read_at       timestamptz,
    UNIQUE (app_id, request_id, user_id, template_key)
);
CREATE INDEX notifications_feed ON notifications (app_id, user_id, id DESC);
CREATE INDEX notifications_unread ON notifications (app_id, user_id) WHERE read_at IS NULL;
CREATE INDEX notifications_target ON notifications (app_id, target_id);

-- Content dedupe of CleverTap's retried webhooks: the same (app, target, user, template)
-- within SBCT_DEDUPE_WINDOW_S is skipped. Rows older than the window are swept.
CREATE TABLE dedupe (
    app_id        text NOT NULL,
    target_id     bigint NOT NULL,
    user_id       text NOT NULL,
    template_key  text NOT NULL,
    request_id    uuid NOT NULL,
    seen_at       timestamptz NOT NULL,
    PRIMARY KEY (app_id, target_id, user_id, template_key)
);
CREATE INDEX dedupe_seen ON dedupe (seen_at);

-- Idempotency-Key header: the first answer is replayed for the same key.
CREATE TABLE idempotency_keys (
    app_id      text NOT NULL,
    key         text NOT NULL,
    response    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, key)
);

-- Deliveries that could not be made (e.g. a missing template variable).
CREATE TABLE delivery_failures (
    app_id        text NOT NULL,
    request_id    uuid NOT NULL,
    target_id     bigint NOT NULL,
    user_id       text NOT NULL,
    template_key  text NOT NULL,
    reason        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, request_id, user_id, template_key)
);
CREATE INDEX delivery_failures_target ON delivery_failures (app_id, target_id);

-- Transactional outbox: SENT/READ events are written in the same transaction as the feed
-- change, published after commit, and deleted once the broker confirmed them. A sweeper
-- republishes rows a crashed process left behind.
CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id      text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
