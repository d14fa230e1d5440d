/** The data directory's SQLite file: opened in WAL mode, migrated on open. */
import Database from "better-sqlite3";

export type Db = Database.Database;

const MIGRATIONS: string[] = [
  `CREATE TABLE events (
     seq        INTEGER PRIMARY KEY,
     time       TEXT NOT NULL,
     principal  TEXT NOT NULL,
     sandbox    TEXT,
     kind       TEXT NOT NULL,
     details    TEXT NOT NULL,
     outcome    TEXT NOT NULL,
     prev_hash  TEXT NOT NULL,
     hash       TEXT NOT NULL
   );
   CREATE INDEX events_sandbox ON events(sandbox);`,
];

export function openDb(file: string): Db {
  const db = new Database(file);
  db.pragma("journal_mode = WAL");
  // Several processes (CLI runs, gc, later the server) append to the same file.
  db.pragma("busy_timeout = 10000");
  // Events are an audit record: a committed append survives a power cut.
  db.pragma("synchronous = FULL");
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version >= MIGRATIONS.length) return;
  db.transaction(() => {
    const current = db.pragma("user_version", { simple: true }) as number;
    for (let v = current; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v]!);
    db.pragma(`user_version = ${MIGRATIONS.length}`);
  }).immediate();
}
