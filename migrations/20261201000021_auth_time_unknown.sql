-- `sessions.auth_time` is NULL when the login's ID token named no `auth_time`; it no longer
-- falls back to the login's own time. A silent login (`prompt=none`) rides on the provider's
-- single sign-on, so "now" made an old authentication look recent, and `DELETE /api/sessions`
-- (which needs one under 10 minutes old) ended every other session on its word. NULL counts as
-- too old wherever `auth_time` is checked. No default: a row inserted without it is unknown,
-- not new. Existing rows keep their values.
ALTER TABLE sessions
    ALTER COLUMN auth_time DROP DEFAULT,
    ALTER COLUMN auth_time DROP NOT NULL;
