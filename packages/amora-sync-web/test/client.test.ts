/** Unit tests of the client's building blocks and of its behaviour without a broker. */
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { test } from "node:test";

import {
  AmoraClient,
  AmoraSyncError,
  AuthenticationError,
  Backoff,
  BadSignature,
  CommandExpiredError,
  ConnectError,
  InvalidCommandError,
  LatestPerKeyQueue,
  OutboxFullError,
  parseSession,
  positionAt,
  ProtocolError,
  SessionError,
  SigningKey,
  toBase64,
  UnknownDeviceError,
  uuid7,
  type DeviceState,
} from "../src/index.js";

test("backoff draws full jitter under an exponentially growing, capped ceiling", () => {
  const draws = [1, 1, 1, 1, 1, 1, 1, 1, 0.5, 0];
  const backoff = new Backoff({ initialDelayMs: 100, maxDelayMs: 1000, multiplier: 2, connectTimeoutMs: 1 }, () => draws.shift()!);
  const delays = Array.from({ length: 10 }, () => backoff.nextDelay());
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000, 1000, 1000, 500, 0]);
  backoff.reset();
  assert.equal(backoff.ceiling(), 100);
});

test("the latest-per-key queue replaces waiting items in place and drops the oldest key beyond its bound", async () => {
  const queue = new LatestPerKeyQueue<string, number>(2);
  queue.put("a", 1);
  queue.put("b", 1);
  queue.put("a", 2); // replaces, keeps a's place
  assert.equal(queue.superseded, 1);
  queue.put("c", 1); // a third key: the oldest (a) goes
  assert.equal(queue.dropped, 1);
  assert.equal(await queue.get(), 1); // b
  assert.equal(await queue.get(), 1); // c
  const waiting = queue.get();
  queue.put("d", 7);
  assert.equal(await waiting, 7);
  queue.close();
  assert.equal(await queue.get(), undefined);
});

test("the position ticks while playing, stops at the duration, and holds when paused", () => {
  const state: DeviceState = {
    device_id: "p",
    version: 1,
    status: "play",
    sampled_at_ms: 1_000,
    elapsed_ms: 500,
    song: { file: "x", duration_ms: 2_000 },
    options: { repeat: false, random: false, single: "off", consume: false },
    queue_length: 1,
    queue_version: 1,
  };
  assert.equal(positionAt(state, 1_300), 800);
  assert.equal(positionAt(state, 900), 500); // clock behind the sample: never backwards
  assert.equal(positionAt(state, 10_000), 2_000);
  assert.equal(positionAt({ ...state, status: "pause" }, 10_000), 500);
  const { elapsed_ms: _, ...empty } = state;
  assert.equal(positionAt(empty, 10_000), undefined);
});

test("errors share one root, and protocol errors keep the specification's names", () => {
  const error = new BadSignature("x");
  assert.ok(error instanceof ProtocolError && error instanceof AmoraSyncError);
  assert.equal(error.name, "BadSignature");
  assert.ok(new AuthenticationError("x") instanceof SessionError);
});

test("command ids are UUIDv7 carrying their millisecond timestamp", () => {
  const id = uuid7(0x0123_4567_89ab);
  assert.match(id, /^01234567-89ab-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(uuid7(1), uuid7(1));
});

const deviceKey = SigningKey.generate();

function sessionAnswer(endpoints: string[]): Record<string, unknown> {
  return {
    session_id: "sess-1",
    expires_at: Date.now() + 3_600_000,
    broker: { endpoints, username: "sess-1", password: "secret", client_id: "sess-1" },
    grant: toBase64(new Uint8Array([0x93])),
    devices: [{ device_id: "player-1", signing_key: toBase64(deviceKey.publicKey.raw) }],
    authz_keys: [],
  };
}

test("a session keeps only wss:// endpoints and refuses one without any", () => {
  const session = parseSession(sessionAnswer(["mqtts://127.0.0.1:8883", "wss://localhost:1/mqtt"]));
  assert.deepEqual(session.broker.endpoints, ["wss://localhost:1/mqtt"]);
  assert.equal(session.devices.get("player-1")?.signingKey.kid, deviceKey.kid);
  assert.throws(() => parseSession(sessionAnswer(["mqtts://127.0.0.1:8883"])), SessionError);
});

/** A loopback port that accepts TCP and closes at once: a broker that is down. */
async function deadEndpoint(): Promise<{ url: string; close: () => void }> {
  const server = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return { url: `wss://127.0.0.1:${port}/mqtt`, close: () => server.close() };
}

function fakeAuthz(answer: Record<string, unknown>, status = 201): typeof fetch {
  return (async () => new Response(JSON.stringify(answer), { status, headers: { "Content-Type": "application/json" } })) as typeof fetch;
}

test("a refused token is an AuthenticationError", async () => {
  const fetcher = fakeAuthz({ code: "invalid_token", message: "expired" }, 401);
  await assert.rejects(AmoraClient.open("http://authz", () => "t", { fetch: fetcher }), (e: Error) => e instanceof AuthenticationError && /expired/.test(e.message));
});

test("no reachable endpoint within the deadline is a ConnectError", async () => {
  const dead = await deadEndpoint();
  try {
    await assert.rejects(
      AmoraClient.open("http://authz", () => "t", { fetch: fakeAuthz(sessionAnswer([dead.url])), connectTimeoutMs: 600, reconnect: { initialDelayMs: 50, maxDelayMs: 100 } }),
      (e: Error) => e instanceof ConnectError && e.attempts >= 1,
    );
  } finally {
    dead.close();
  }
});

test("the outbox is bounded and never sends a command after its deadline", async () => {
  const dead = await deadEndpoint();
  const client = await AmoraClient.open("http://authz", () => "t", {
    fetch: fakeAuthz(sessionAnswer([dead.url])),
    connectTimeoutMs: 0, // do not wait: the broker is down
    maxPendingCommands: 1,
    reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
  });
  try {
    const waiting = client.command("player-1", { type: "pause" }, { timeoutMs: 300 });
    await assert.rejects(client.command("player-1", { type: "play" }), OutboxFullError);
    await assert.rejects(waiting, CommandExpiredError);
    assert.equal(client.stats.commandsSent, 0);
    await assert.rejects(client.command("player-2", { type: "play" }), UnknownDeviceError);
    await assert.rejects(client.command("player-1", { type: "set_volume", volume: 400 }), InvalidCommandError);
  } finally {
    await client.close({ logout: false });
    dead.close();
  }
});
