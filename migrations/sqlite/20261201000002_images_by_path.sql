-- Lookup of image rows by file path.
--
-- Several image rows may share one file (same bytes under different products), so a file may
-- only be swept once no row refers to it; `referenced_paths` asks that for a batch of paths,
-- which without this index scans every image row. Portable: SQLite and Postgres both accept it.

CREATE INDEX images_by_path ON images (path);
