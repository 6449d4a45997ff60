-- The syslog app's table (workers.syslog:app); `prefork initdb workers.syslog:app` and every worker create it
-- when missing, with the marker and server run tables of etc/schema.sql. A configured syslog.table replaces
-- `syslog_messages`.
-- Made by `python -m workers.schema syslog` from workers/schema.py: change that, then run it again.

CREATE TABLE IF NOT EXISTS `syslog_messages` (
  id              BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT PRIMARY KEY,
  received_at     DATETIME(6)      NOT NULL,
  client_addr     VARCHAR(64)      NOT NULL,
  worker_pid      INT UNSIGNED     NOT NULL,
  facility        TINYINT UNSIGNED NULL,
  severity        TINYINT UNSIGNED NULL,
  ts_text         VARCHAR(40) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ts_utc          DATETIME(6)      NULL,
  hostname        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  app_name        VARCHAR(48)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  procid          VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  msgid           VARCHAR(32)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  structured_data JSON             NULL,
  message         MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  raw             MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  KEY ts_utc (ts_utc),
  KEY host_ts (hostname, ts_utc),
  KEY severity_ts (severity, ts_utc),
  KEY received_at (received_at)
) ENGINE=InnoDB;

-- With server.line_ids = on, the workers and `prefork initdb` add the line id column and its unique key to
-- the ingest table (left out while it is off), each only if information_schema says it is missing:
-- ALTER TABLE `syslog_messages` ADD COLUMN line_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL, ADD UNIQUE KEY line_id (line_id);
