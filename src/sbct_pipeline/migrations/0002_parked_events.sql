-- Events of apps whose CleverTap credentials were refused (401/403): kept here, not
-- dropped, until the app's integration settings change; then republished.
CREATE TABLE parked_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id      text NOT NULL,
    payload     bytea NOT NULL,
    reason      text NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX parked_events_app ON parked_events (app_id, parked_at);
