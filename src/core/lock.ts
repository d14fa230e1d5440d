/**
 * Locks that the kernel releases when their holder dies: an abstract unix socket bound by
 * name. Node has no flock(2); a bound abstract socket is held for exactly the life of the
 * process (or until released), cannot be left stale by a crash, and a second bind of the
 * same name fails with EADDRINUSE. Abstract names live in the network namespace, so code
 * inside a sandbox (its own network namespace) can neither see nor take them.
 */
import net from "node:net";

export type Release = () => Promise<void>;

function tryBind(name: string): Promise<net.Server | null> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => socket.destroy());
    server.once("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EADDRINUSE") resolve(null);
      else reject(err);
    });
    server.listen(`\0${name}`, () => {
      // The lock must not keep the process alive by itself.
      server.unref();
      resolve(server);
    });
  });
}

/** Take the lock `name`; with `wait`, poll until it is free (or the deadline passes). */
export async function acquireLock(
  name: string,
  options: { wait?: boolean; timeoutMs?: number } = {},
): Promise<Release | null> {
  const deadline = Date.now() + (options.timeoutMs ?? 30 * 60_000);
  for (;;) {
    const server = await tryBind(name);
    if (server) {
      let released = false;
      return () =>
        new Promise<void>((resolve) => {
          if (released) return resolve();
          released = true;
          server.close(() => resolve());
        });
    }
    if (!options.wait || Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Whether some live process holds `name` (without keeping it). */
export async function isLockHeld(name: string): Promise<boolean> {
  const release = await acquireLock(name);
  if (release === null) return true;
  await release();
  return false;
}
