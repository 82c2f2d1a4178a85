-- A token limited to chosen services (a JSON array of their ids) reaches only those, through the
-- gateway, and not the API or the console; NULL: every service the user may call, and the API.
ALTER TABLE api_tokens ADD COLUMN services TEXT;
