/** No network: the sandbox has only its own loopback (hostile.yaml: no-network-by-default). */
import dgram from "node:dgram";
import net from "node:net";
import os from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type TestEnv, testEnv } from "../helpers/sandbox.js";

let env: TestEnv;
beforeAll(async () => {
  env = await testEnv("network");
});
afterAll(() => env?.close());

/** The host's own addresses: loopback and every non-internal IPv4 address. */
function hostAddresses(): string[] {
  const external = Object.values(os.networkInterfaces())
    .flat()
    .filter((a) => a && a.family === "IPv4" && !a.internal)
    .map((a) => a?.address as string);
  return ["127.0.0.1", ...external];
}

interface Counters {
  tcp: number;
  udp: number;
}

async function startListeners(addresses: string[]) {
  const counts: Counters = { tcp: 0, udp: 0 };
  const servers: net.Server[] = [];
  const sockets: dgram.Socket[] = [];
  const ports: { address: string; tcp: number; udp: number }[] = [];
  for (const address of addresses) {
    const server = net.createServer((c) => {
      counts.tcp++;
      c.destroy();
    });
    await new Promise<void>((r) => server.listen(0, address, r));
    const udp = dgram.createSocket("udp4");
    udp.on("message", () => counts.udp++);
    await new Promise<void>((r) => udp.bind(0, address, r));
    servers.push(server);
    sockets.push(udp);
    ports.push({
      address,
      tcp: (server.address() as net.AddressInfo).port,
      udp: udp.address().port,
    });
  }
  return {
    counts,
    ports,
    close: async () => {
      for (const s of servers) await new Promise((r) => s.close(r));
      for (const s of sockets) s.close();
    },
  };
}

describe("no network by default", () => {
  it("the host's TCP and UDP listeners receive nothing from inside", async () => {
    const listeners = await startListeners(hostAddresses());
    try {
      // Reachable from the host: the counters work.
      for (const p of listeners.ports) {
        await new Promise<void>((resolve, reject) => {
          const c = net.connect(p.tcp, p.address, () => {
            c.destroy();
            resolve();
          });
          c.on("error", reject);
        });
        const u = dgram.createSocket("udp4");
        await new Promise((r) => u.send("ping", p.udp, p.address, r));
        u.close();
      }
      await new Promise((r) => setTimeout(r, 200));
      expect(listeners.counts.tcp).toBe(listeners.ports.length);
      expect(listeners.counts.udp).toBe(listeners.ports.length);
      listeners.counts.tcp = 0;
      listeners.counts.udp = 0;

      const targets = JSON.stringify(listeners.ports.map((p) => [p.address, p.tcp, p.udp]));
      const code = [
        "import json, socket, time",
        `targets = json.loads('${targets}')`,
        "results = {'tcp_ok': 0, 'udp_ok': 0, 'slowest': 0.0, 'errors': set()}",
        "for addr, tport, uport in targets:",
        "    for i in range(100):",
        "        t = time.monotonic()",
        "        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
        "        s.settimeout(5)",
        "        try:",
        "            s.connect((addr, tport)); results['tcp_ok'] += 1",
        "        except OSError as e:",
        "            results['errors'].add(e.errno)",
        "        s.close()",
        "        results['slowest'] = max(results['slowest'], time.monotonic() - t)",
        "        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "        try:",
        "            u.sendto(b'x', (addr, uport)); results['udp_ok'] += 1",
        "        except OSError as e:",
        "            results['errors'].add(e.errno)",
        "        u.close()",
        "results['errors'] = sorted(results['errors'])",
        "ifaces = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]",
        "results['ifaces'] = ifaces",
        "print(json.dumps(results))",
      ].join("\n");
      const r = await env.run("python", code);
      expect(r.stderr.text).toBe("");
      const res = JSON.parse(r.stdout.text) as {
        tcp_ok: number;
        udp_ok: number;
        slowest: number;
        errors: number[];
        ifaces: string[];
      };
      await new Promise((r) => setTimeout(r, 200));
      expect(listeners.counts).toEqual({ tcp: 0, udp: 0 });
      expect(res.tcp_ok).toBe(0);
      expect(res.ifaces).toEqual(["lo"]);
      // 127.0.0.1 inside is the sandbox's own loopback: refused (111); anything else is
      // unreachable (101). Every attempt fails fast.
      expect(res.errors.every((e) => e === 111 || e === 101)).toBe(true);
      expect(res.slowest).toBeLessThan(0.5);
    } finally {
      await listeners.close();
    }
  });

  it("DNS resolution fails fast", async () => {
    const r = await env.run(
      "shell",
      "getent hosts example.com; echo rc=$?; curl -sS -m 5 http://10.0.0.1/ 2>&1; echo curl=$?",
    );
    expect(r.stdout.text).toMatch(/^rc=2\n/);
    expect(r.stdout.text).toMatch(/curl=7\n$/);
    expect(r.durationMs).toBeLessThan(5000);
  });
});
