-- Node labels (JSON object of strings) that services can require with constraints.
ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
