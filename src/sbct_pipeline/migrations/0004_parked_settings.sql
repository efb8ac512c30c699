-- Which integration settings CleverTap refused (settings_at = integrations.updated_at used
-- for the refused request): any later change releases the events, even a change made while
-- that request was in flight. oldest_ts: the oldest event's time, for the export-lag gauge.
ALTER TABLE parked_events ADD COLUMN settings_at timestamptz;
ALTER TABLE parked_events ADD COLUMN oldest_ts bigint;
