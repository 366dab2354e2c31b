/**
 * The protocol's test vectors (packages/amora-protocol/vectors/envelopes.json): every valid
 * one verifies and decodes to its `message`, every unsealed one is reproduced byte for byte,
 * sealed ones open to their `plaintext_hex`, and every negative one fails with its `expect` class.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  decodeJson,
  encodeEnvelope,
  encodeJson,
  EncryptionKey,
  fromHex,
  hex,
  keyring,
  messageToWire,
  open,
  parseEnvelope,
  parseTopic,
  sealInfo,
  SigningKey,
  verifyCommand,
  verifyEnvelope,
  VerifyKey,
  type Codec,
  type Message,
  type MessageType,
} from "../src/index.js";

interface Vector {
  name: string;
  topic: string;
  content_type: string | null;
  envelope_hex: string;
  signer_public_key_hex: string;
  signer_private_key_hex: string;
  expect: string;
  now: number;
  message?: unknown;
  authz_public_key_hex?: string;
  recipient_private_key_hex?: string;
  plaintext_hex?: string;
  max_size?: number;
  canonical?: boolean;
}

const path = new URL("../../../amora-protocol/vectors/envelopes.json", import.meta.url);
const vectors = JSON.parse(readFileSync(path, "utf8")) as Vector[];

async function verify(v: Vector): Promise<{ type: MessageType; message: Message }> {
  const payload = fromHex(v.envelope_hex);
  const options = {
    topic: v.topic,
    contentType: v.content_type,
    nowMs: v.now,
    ...(v.recipient_private_key_hex ? { decryptKey: EncryptionKey.fromRaw(fromHex(v.recipient_private_key_hex)) } : {}),
    ...(v.max_size !== undefined ? { maxSize: v.max_size } : {}),
  };
  if (v.authz_public_key_hex !== undefined) {
    const trusted = keyring([VerifyKey.fromRaw(fromHex(v.authz_public_key_hex))]);
    const verified = await verifyCommand(payload, trusted, options);
    return { type: "command", message: verified.command };
  }
  const verified = await verifyEnvelope(payload, VerifyKey.fromRaw(fromHex(v.signer_public_key_hex)), options);
  return verified;
}

/** The message as the vectors write it: JSON, defaults left out. */
function asJson(type: MessageType, message: Message): unknown {
  return decodeJson(encodeJson(messageToWire(type, message)), "message");
}

test("the vector file is not empty and covers every expected class", () => {
  assert.ok(vectors.length >= 30);
  const classes = new Set(vectors.map((v) => v.expect));
  for (const c of ["valid", "BadSignature", "SchemaError", "TooLarge", "TopicMismatch", "UnknownKey", "Expired", "Unauthorized", "DecryptionError"]) {
    assert.ok(classes.has(c), `no vector expects ${c}`);
  }
});

for (const v of vectors) {
  test(`vector ${v.name} (${v.expect})`, async () => {
    const signer = SigningKey.fromRaw(fromHex(v.signer_private_key_hex));
    assert.equal(hex(signer.publicKey.raw), v.signer_public_key_hex);
    if (v.expect !== "valid") {
      await assert.rejects(verify(v), (err: Error) => {
        assert.equal(err.name, v.expect, `expected ${v.expect}, got ${err.name}: ${err.message}`);
        return true;
      });
      return;
    }
    const { type, message } = await verify(v);
    assert.equal(type, KIND[parseTopic(v.topic).kind]);
    assert.deepEqual(asJson(type, message), v.message);
    const env = parseEnvelope(fromHex(v.envelope_hex), { contentType: v.content_type, maxSize: v.max_size ?? 1 << 20 });
    if (env.header.sealed_to !== undefined) {
      const key = EncryptionKey.fromRaw(fromHex(v.recipient_private_key_hex!));
      const plaintext = await open(key, sealInfo(v.topic, env.headerBytes), env.body);
      assert.equal(hex(plaintext), v.plaintext_hex);
      return; // HPKE's ephemeral key makes sealed bytes differ per run
    }
    if (v.canonical === false) return; // hand-made bytes (e.g. an unknown key) no encoder writes
    const again = await encodeEnvelope(v.topic, message, {
      signingKey: signer,
      sender: env.header.sender,
      epoch: env.header.epoch,
      seq: env.header.seq,
      nowMs: env.header.ts_ms,
      ...(env.header.exp_ms !== undefined ? { expiresAtMs: env.header.exp_ms } : {}),
      ...(env.header.grant !== undefined ? { grant: env.header.grant } : {}),
      codec: env.codec as Codec,
    });
    assert.equal(hex(again), v.envelope_hex);
  });
}

const KIND = { state: "state", commands: "command", responses: "response", connection: "connection" } as const;
