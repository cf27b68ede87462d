-- Lookup of image rows by file path (as `migrations/sqlite/`, same version number).
--
-- Several image rows may share one file (same bytes under different products), so a file may
-- only be swept once no row refers to it; `referenced_paths` asks that for a batch of paths
-- (`path = ANY($1)`), which without this index scans every image row.

CREATE INDEX images_by_path ON images (path);
