/**
 * The SDK from Node against the real stack (run before the page suite, while the primary broker
 * is up): commands with correlation at QoS 1 and 2, and recovery when the session's broker
 * credential is revoked (the client exchanges its token again and reconnects).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { AmoraClient, type ConnectionInfo } from "../src/index.js";

interface StackInfo {
  authz_url: string;
  broker: { ca_file: string };
  users: Record<string, { devices: string[] }>;
}

let info: StackInfo;
let client: AmoraClient;
const changes: ConnectionInfo[] = [];

async function token(): Promise<string> {
  const response = await fetch(`${info.authz_url}/dev-issuer/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: "alice" }),
  });
  assert.equal(response.status, 200);
  return ((await response.json()) as { access_token: string }).access_token;
}

function until(predicate: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    const check = (): void => {
      if (predicate()) return resolve();
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(check, 20);
    };
    check();
  });
}

before(async () => {
  info = JSON.parse(readFileSync(process.env["AMORA_STACK_JSON"]!, "utf8")) as StackInfo;
  client = await AmoraClient.open(info.authz_url, token, {
    mqttOptions: { ca: readFileSync(info.broker.ca_file) },
    reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
    onConnectionChange: (change) => changes.push(change),
  });
});

after(async () => {
  await client?.close();
});

test("commands are answered through correlation, critical ones at QoS 2", async () => {
  const simulated = info.users["alice"]!.devices[1]!; // a simulated player: next is harmless
  const watch = client.watch([simulated], { includeConnection: false });
  const iterator = watch[Symbol.asyncIterator]();
  const first = await iterator.next();
  assert.equal(first.done, false);
  const answer = await client.command(simulated, { type: "next" }); // critical: QoS 2
  assert.equal(answer.status, "succeeded");
  assert.equal(answer.device_id, simulated);
  const ping = await client.command(simulated, { type: "ping" });
  assert.equal(ping.status, "succeeded");
  assert.notEqual(ping.command_id, answer.command_id);
  // The state that follows the command is newer than the one before it.
  const next = await iterator.next();
  assert.ok(!next.done && next.value.kind === "state");
  assert.ok(first.value.kind === "state" && next.value.state.version > first.value.state.version);
  await iterator.return?.();
});

test("a revoked session is replaced: the client exchanges its token again and reconnects", async () => {
  const old = client.session.sessionId;
  // Ending the session at the authz service deletes its broker account, which kicks the client.
  const response = await fetch(`${info.authz_url}/v1/sessions/${old}`, { method: "DELETE", headers: { Authorization: `Bearer ${await token()}` } });
  assert.ok(response.status < 300, `DELETE answered ${response.status}`);
  await until(() => client.stats.sessionExchanges >= 2 && client.connection.state === "connected", "a new session and a connection");
  assert.notEqual(client.session.sessionId, old);
  assert.ok(changes.some((c) => c.state === "reconnecting"));
  const device = info.users["alice"]!.devices[1]!;
  assert.equal((await client.command(device, { type: "ping" })).status, "succeeded");
});
