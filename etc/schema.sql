-- The ingest table, the batch marker table and the server run table; `prefork initdb` and every worker
-- create them when missing. A configured ingest.table replaces `received_lines`.
-- Made by `python -m workers.schema` from workers/schema.py: change that, then run it again.

CREATE TABLE IF NOT EXISTS `received_lines` (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  received_at DATETIME(6)     NOT NULL,
  client_addr VARCHAR(64)     NOT NULL,
  worker_pid  INT UNSIGNED    NOT NULL,
  payload     MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS `prefork_batches` (
  batch_id   BINARY(16) NOT NULL PRIMARY KEY,
  created_at DATETIME   NOT NULL DEFAULT CURRENT_TIMESTAMP,
  KEY (created_at)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS `prefork_server_run` (
  id    TINYINT    NOT NULL PRIMARY KEY,
  token BINARY(16) NOT NULL
) ENGINE=MEMORY;

-- With server.line_ids = on, the workers and `prefork initdb` add the line id column and its unique key to
-- the ingest table (left out while it is off), each only if information_schema says it is missing:
-- ALTER TABLE `received_lines` ADD COLUMN line_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL, ADD UNIQUE KEY line_id (line_id);

-- With ingest.client_cert = on, the workers and `prefork initdb` add the client certificate column (the
-- subject of the client's verified TLS certificate) to the ingest table, if information_schema says it is
-- missing:
-- ALTER TABLE `received_lines` ADD COLUMN client_cert VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
