// Envelopes made by this package, for the Python implementation to verify (interop test in
// tests-integration/test_web_sdk.py): node scripts/emit-envelopes.mjs > envelopes.json
// `message` is the wire form (defaults left out), as msgspec writes it. Fixed seeds as in the vectors; sealed ones differ per run (HPKE's ephemeral key).
import {
  encodeEnvelope,
  EncryptionKey,
  hex,
  issueGrant,
  JSON_CODEC,
  MSGPACK,
  SigningKey,
  commandsTopic,
  stateTopic,
  connectionTopic,
  responsesTopic,
  messageToWire,
} from "../build/src/index.js";

const seed = (n) => new Uint8Array(32).fill(n);
const device = SigningKey.fromRaw(seed(1));
const session = SigningKey.fromRaw(seed(2));
const authz = SigningKey.fromRaw(seed(3));
const deviceEnc = EncryptionKey.fromRaw(seed(5));
const now = Date.now();
const id = "player-0001";
const sid = "sess-ts-0001";
const grant = issueGrant(
  {
    grant_id: "grant-ts",
    subject: "user-alice",
    session_id: sid,
    signing_key: session.publicKey.raw,
    devices: [id],
    rights: ["watch", "control"],
    issued_at_ms: now - 1000,
    expires_at_ms: now + 600_000,
    encryption_key: deviceEnc.publicKey.raw,
  },
  authz,
);
const state = {
  device_id: id,
  version: 2 ** 40,
  status: "pause",
  sampled_at_ms: now,
  elapsed_ms: 1234,
  song: { file: "a/é.flac", title: "Ünïcode ✓", duration_ms: 5000 },
  volume: 0,
  options: { repeat: false, random: true, single: "oneshot", consume: false },
  queue_length: 3,
  queue_version: 9,
};
const out = [];
const big = 2n ** 63n - 1n; // epochs and sequence numbers are 63-bit
let seq = 0n;
for (const codec of [MSGPACK, JSON_CODEC]) {
  const header = { signingKey: device, sender: id, epoch: big, seq: big - seq++, nowMs: now, codec };
  out.push({ kind: "state", topic: stateTopic(id), codec, hex: hex(await encodeEnvelope(stateTopic(id), state, header)), message: messageToWire("state", state) });
  const status = { device_id: id, online: true, at_ms: now, agent_version: "ts", version: 7 };
  out.push({ kind: "connection", topic: connectionTopic(id), codec, hex: hex(await encodeEnvelope(connectionTopic(id), status, header)), message: messageToWire("connection", status) });
  const response = { command_id: "c-1", device_id: id, status: "rejected", at_ms: now, reason: "clock-skew", clock_offset_ms: -42, duplicate: true };
  out.push({ kind: "response", topic: responsesTopic(id), codec, hex: hex(await encodeEnvelope(responsesTopic(id), response, header)), message: messageToWire("response", response) });
  for (const seal of [false, true]) {
    const command = { id: `cmd-${codec.slice(-4)}-${seal}`, issued_at_ms: now, expires_at_ms: now + 30_000, action: { type: "change_volume", delta: -7 }, if_version: 3 };
    const payload = await encodeEnvelope(commandsTopic(id), command, {
      signingKey: session,
      sender: sid,
      epoch: 5n,
      seq: seq++,
      nowMs: now,
      grant,
      codec,
      ...(seal ? { sealTo: deviceEnc.publicKey } : {}),
    });
    out.push({ kind: "command", topic: commandsTopic(id), codec, hex: hex(payload), message: messageToWire("command", command), sealed: seal });
  }
}
process.stdout.write(JSON.stringify({ device_public_hex: hex(device.publicKey.raw), authz_public_hex: hex(authz.publicKey.raw), recipient_private_hex: hex(deviceEnc.toRaw()), now, envelopes: out }));
