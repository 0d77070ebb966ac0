-- Set (unix seconds) while a refresh token is on its way to Ave; cleared when
-- the outcome is stored. Found set by the next refresher, it means the
-- previous attempt's outcome is unknown, so that refresh token is never sent again.
ALTER TABLE sessions ADD COLUMN refresh_started_at INTEGER;
